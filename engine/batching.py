"""Auto-batched, pipelined script calls on one dedicated Redis connection.

Every script call made during one event-loop turn is written to Redis in one write; the
replies come back in order and are matched to their callers first-in first-out. No MULTI:
each script is atomic on its own, the batch only saves round trips. A call made alone is
written on the next loop iteration (``call_soon``), not on a timer, so batching adds no
latency when there is nothing to batch with. Writes do not wait for earlier replies, so
any number of batches can be in flight on the one connection.

This bypasses redis-py's command machinery on the hot path: the RESP encoding of a call
is a few byte joins (the sha and key part is cached per key set) and replies are parsed
by hiredis. Reservation attempts on one sale in one write go as one script run
(engine/coalesce.py). Every caller gets its own result or its own exception; NOSCRIPT reloads the
script on the same connection and resends the call; a lost connection fails the calls in
flight with redis's ConnectionError (a 503 at the gateway) and the next call reconnects.

The connection goes where and how the redis-py client's own connections go
(engine/transport.py): TCP, TLS (``rediss://``, with the SSL context redis-py builds from
the URL's ``ssl_*`` options) or a Unix socket (``unix://``); a way of connecting it
cannot reproduce is refused at start with Misconfigured, never replaced by another.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.coalesce import coalesce
from engine.errors import reply_error
from engine.scripts import Script
from engine.transport import connect_like


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _encode_args(args: Sequence[str | int]) -> bytes:
    """RESP bulk strings for a call's arguments (text and integers only). ASCII (nearly
    every call: ids, numbers, keys) takes one f-string each and one encode; other text is
    measured in bytes."""
    text = "".join([f"${len(s)}\r\n{s}\r\n" for s in map(str, args)])
    if text.isascii():
        return text.encode()
    return b"".join([_bulk(str(a).encode()) for a in args])


def encode_command(*parts: Any) -> bytes:
    encoded = [_arg(p) for p in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(_bulk(p) for p in encoded)


_ASKING = encode_command("ASKING")


class _Pending:
    __slots__ = ("args", "future", "keys", "members", "raw", "script", "sent_at", "solo")

    def __init__(self, script: Script | None, keys: Sequence[str], args: Sequence[Any],
                 future: asyncio.Future, raw: bytes | None = None, solo: bool = False) -> None:
        self.script, self.keys, self.args, self.future = script, keys, args, future
        self.raw = raw  # a command already encoded (ASKING), sent as it is
        self.sent_at = 0.0
        self.solo = solo  # never merged with others (it follows its ASKING)
        # The callers of a merged run (engine/coalesce.py), each answered with its own
        # answer; None for a call of its own.
        self.members: list[_Pending] | None = None

    def resolve(self, reply: Any) -> None:
        if self.members is not None:
            for member, answer in zip(self.members, reply, strict=True):
                if not member.future.done():
                    member.future.set_result(answer)
        elif self.script is not None and self.script.batch is not None:
            reply = reply[0]  # a batchable script run for one caller, merged with none
        if not self.future.done():
            self.future.set_result(reply)

    def fail(self, exc: BaseException) -> None:
        for member in self.members or ():
            member.fail(exc)
        if not self.future.done():
            self.future.set_exception(exc)


def _merged(script: Script, keys: Sequence[str], common: list) -> _Pending:
    item = _Pending(script, keys, common, asyncio.get_running_loop().create_future())
    item.members = []
    item.future.add_done_callback(lambda f: f.exception())  # its members are the callers
    return item


class _Protocol(asyncio.Protocol):
    def __init__(self, channel: ScriptBatcher) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        self.channel._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._on_lost(exc)


class ScriptBatcher:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 connect_timeout: float = 1.5, timeout: float = 2.0,
                 path: str | None = None, ssl: ssl.SSLContext | None = None,
                 keepalive: dict[int, int | bytes] | None = None) -> None:
        """``path``: a Unix socket instead of ``host``:``port``; ``ssl``: TLS with this
        context (the server's name checked as ``host``); ``keepalive``: TCP keepalive on,
        with these socket options (``connect_like`` gives all of them as redis-py would)."""
        self._host, self._port, self._db = host, port, db
        self._path, self._ssl, self._keepalive = path, ssl, keepalive
        self._username, self._password = username, password
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._queue: list[_Pending] = []
        self._waiting: deque[_Pending] = deque()
        self._scheduled = False
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the transport's
        self._connecting: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._reader = hiredis.Reader(replyError=reply_error)
        self._prefixes: dict[tuple, bytes] = {}
        self._closed = False
        self._wait_queued: _Pending | None = None

    @classmethod
    def beside(cls, client: aioredis.Redis) -> ScriptBatcher:
        """A batcher talking to the same server and db as ``client``, the way its pool's
        connections do (TCP, TLS or Unix socket); Misconfigured when it cannot."""
        pool = client.connection_pool
        return cls(**connect_like(pool.connection_class, pool.connection_kwargs))

    # -- calls ---------------------------------------------------------------------------
    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any], *,
             asking: bool = False) -> asyncio.Future:
        """``asking``: precede the call with ASKING on the same connection (a Redis Cluster
        slot being migrated, engine/cluster.py); both go out in the same write."""
        # The loop of the live connection (asyncio.get_running_loop() is a getpid system
        # call on every use in Python 3.11); any other time, the running one.
        loop = self._loop if self._transport is not None else asyncio.get_running_loop()
        future = loop.create_future()
        if asking:
            ask = _Pending(None, (), (), loop.create_future(), raw=_ASKING)
            ask.future.add_done_callback(lambda f: f.exception())  # read, never raised
            self._queue.append(ask)
        self._queue.append(_Pending(script, keys, args, future, solo=asking))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def wait_replicas(self, key: str, replicas: int, timeout_ms: int) -> asyncio.Future:
        """WAIT on this connection after every call sent so far: resolves with how many
        replicas acknowledged their writes. Callers of one loop turn share one WAIT.
        (``key`` routes the WAIT on a cluster, engine/cluster.py; one server needs none.)
        WAIT blocks the connection until it answers, so the calls behind it wait too."""
        queued = self._wait_queued
        if queued is not None:
            return queued.future
        loop = asyncio.get_running_loop()
        queued = self._wait_queued = _Pending(
            None, (), (), loop.create_future(),
            raw=encode_command("WAIT", replicas, timeout_ms))
        self._queue.append(queued)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return queued.future

    def _encode(self, item: _Pending) -> bytes:
        if item.raw is not None:
            return item.raw
        script, keys, args = item.script, item.keys, item.args
        key = (script.sha, keys, len(args))  # keys: a tuple from engine.keys, hashed fast
        prefix = self._prefixes.get(key)
        if prefix is None:
            parts = [b"EVALSHA", script.sha.encode(), str(len(keys)).encode(),
                     *(k.encode() for k in keys)]
            prefix = (b"*%d\r\n" % (len(parts) + len(args))
                      + b"".join(_bulk(p) for p in parts))
            if len(self._prefixes) > 10_000:
                self._prefixes.clear()
            self._prefixes[key] = prefix
        return prefix + _encode_args(args)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # flushed again once connected
        batch, self._queue = coalesce(self._queue, _merged), []
        self._wait_queued = None
        now = time.monotonic()
        for item in batch:
            item.sent_at = now
        self._waiting.extend(batch)
        self._transport.write(b"".join([self._encode(item) for item in batch]))

    def _send(self, command: bytes, item: _Pending) -> None:
        item.sent_at = time.monotonic()
        self._waiting.append(item)
        self._transport.write(command)

    # -- replies -------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            item = self._waiting.popleft()
            if isinstance(reply, ResponseError):
                if str(reply).startswith("NOSCRIPT") and item.script is not None:
                    self._reload_and_resend(item)
                    continue
                item.fail(reply)
            else:
                item.resolve(reply)

    def _reload_and_resend(self, item: _Pending) -> None:
        """Redis lost its script cache (restart, SCRIPT FLUSH): load the source and send
        the call again. Both go in order on this connection, so the load lands first."""
        loop = asyncio.get_running_loop()
        loaded = _Pending(None, (), (), loop.create_future())
        loaded.future.add_done_callback(lambda f: f.exception())  # read, never raised
        self._send(encode_command("SCRIPT", "LOAD", item.script.source), loaded)
        item.script.count_reload()
        self._send(self._encode(item), item)

    # -- connection ----------------------------------------------------------------------
    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(self._open(loop), self._connect_timeout)
            self._reader = hiredis.Reader(replyError=reply_error)
            self._transport, self._loop = transport, loop
            await self._handshake()
        except (OSError, TimeoutError, ResponseError) as exc:
            self._fail_all(RedisConnectionError(f"cannot reach Redis for scripts: {exc}"))
            if self._transport is not None:
                self._transport.abort()
            self._transport = None
        finally:
            self._connecting = None
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())
        if self._queue and self._transport is not None:
            self._flush()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Transport, Any]:
        if self._path is not None:
            return await loop.create_unix_connection(lambda: _Protocol(self), self._path)
        transport, protocol = await loop.create_connection(
            lambda: _Protocol(self), self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None)
        sock = transport.get_extra_info("socket")
        if self._keepalive is not None and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in self._keepalive.items():
                    sock.setsockopt(socket.SOL_TCP, option, value)
            except (OSError, TypeError) as exc:
                transport.abort()
                raise OSError(f"TCP keepalive options: {exc}") from exc
        return transport, protocol

    async def _handshake(self) -> None:
        loop = asyncio.get_running_loop()
        commands = []
        if self._password:
            commands.append(encode_command("AUTH", *(
                [self._username] if self._username else []), self._password))
        if self._db:
            commands.append(encode_command("SELECT", self._db))
        for command in commands:
            item = _Pending(None, (), (), loop.create_future())
            self._send(command, item)
            await asyncio.wait_for(item.future, self._connect_timeout)

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_waiting(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for item in waiting:
            item.fail(exc)

    def _fail_all(self, exc: Exception) -> None:
        self._fail_waiting(exc)
        queued, self._queue = self._queue, []
        for item in queued:
            item.fail(exc)

    async def _watch(self) -> None:
        """Redis alive but silent: fail what waits longer than the timeout and reconnect."""
        while not self._closed:
            await asyncio.sleep(min(0.25, self._timeout / 4))
            if self._waiting and time.monotonic() - self._waiting[0].sent_at > self._timeout:
                transport, self._transport = self._transport, None
                self._fail_waiting(RedisTimeoutError("Redis did not answer in time"))
                if transport is not None:
                    transport.abort()

    async def drain(self) -> None:
        """Answer the calls in flight, then close (at shutdown)."""
        if self._queue:
            self._flush()
        pending = [f for item in (*self._waiting, *self._queue)
                   for f in (item.future, *(m.future for m in item.members or ()))]
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
