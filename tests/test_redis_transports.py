"""The hot path's own Redis connection (engine/batching.py, engine/cluster.py) goes where
and how FLASHSALE_REDIS_URL says: a Unix socket (unix://), TLS (rediss://), TLS to every
node of a cluster. Each case runs against a private redis-server that listens only that
way, so a batcher connecting anywhere else (the old code: TCP to host:port, or
127.0.0.1:6379) fails the reservation. Never the shared Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.admission import Admission
from engine.batching import ScriptBatcher
from engine.cluster import ClusterScriptBatcher
from engine.connections import open_redis
from engine.errors import Misconfigured
from engine.keys import sale_keys
from engine.sales import Sales
from engine.scripts import SCRIPTS
from gateway.app import create_app
from tests.conftest import Api, GatewayServer, create_sale, make_settings

REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ping: list[str], proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(ping, capture_output=True, text=True).stdout.strip()
        if out == "PONG":
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-1500:] if log.exists() else "no log"
            raise RuntimeError(f"private redis-server did not start: {tail}")
        time.sleep(0.05)


@contextlib.contextmanager
def private_redis(tmp: Path, *listen: str, ping: list[str]) -> Iterator[None]:
    log = tmp / "redis.log"
    proc = subprocess.Popen(
        [REDIS_SERVER, *listen, "--dir", str(tmp), "--save", "", "--appendonly", "no",
         "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(ping, proc, log)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening only on a Unix socket (no TCP port at all)."""
    sock = tmp_path / "redis.sock"
    with private_redis(tmp_path, "--port", "0", "--unixsocket", str(sock),
                       "--unixsocketperm", "700", ping=["redis-cli", "-s", str(sock), "ping"]):
        yield sock


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A throwaway self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    if OPENSSL is None:
        pytest.skip("no openssl command to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    made = subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr.strip()}")
    return tmp


def _tls_args(cert: Path, port: int) -> list[str]:
    return ["--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert / "cert.pem"), "--tls-key-file", str(cert / "key.pem"),
            "--tls-ca-cert-file", str(cert / "cert.pem"), "--tls-auth-clients", "no"]


def _tls_ping(cert: Path, port: int) -> list[str]:
    return ["redis-cli", "--tls", "--cacert", str(cert / "cert.pem"), "-p", str(port), "ping"]


@contextlib.contextmanager
def tls_redis(tmp: Path, cert: Path, *extra: str) -> Iterator[int]:
    """A redis-server listening only on a TLS port; skipped when it was built without TLS."""
    port = free_port()
    try:
        server = private_redis(tmp, *_tls_args(cert, port), *extra, ping=_tls_ping(cert, port))
        server.__enter__()
    except RuntimeError as exc:
        if "tls" in str(exc).lower() and "support" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise
    try:
        yield port
    finally:
        server.__exit__(None, None, None)


async def _reserve_through_batcher(redis: aioredis.Redis | aioredis.RedisCluster,
                                   product_factory) -> int:
    """A sale loaded into ``redis`` and two holds taken through the batcher: they are in
    that server's books. Its sale id."""
    sales = Sales(pool=product_factory.pool, redis=redis)
    product = await product_factory(stock=10)
    sale = await sales.create(product_id=product, quantity=5, price=Decimal("9.99"),
                              per_user_limit=2)
    admission = Admission(redis)  # batching: the hot path's own connection
    assert admission._batcher is not None
    try:
        holds = await asyncio.wait_for(asyncio.gather(
            admission.reserve(sale["sale_id"], 1, 1, str(uuid.uuid4())),
            admission.reserve(sale["sale_id"], 2, 1, str(uuid.uuid4()))), 10)
    finally:
        await admission.close()
    assert len({h.reservation_id for h in holds}) == 2
    counts = await sales.counts(sale["sale_id"])
    assert (counts["tokens"], counts["held"], counts["live_holds"]) == (3, 2, 2), counts
    return sale["sale_id"]


@pytest.fixture
def product_factory(product_factory, pool):
    product_factory.pool = pool
    return product_factory


async def test_unix_socket_url_reaches_the_socket(unix_socket, product_factory, redis):
    settings = make_settings(redis_url=f"unix://{unix_socket}?db=11")
    client = await open_redis(settings)  # as a process starts: is it a cluster? no
    try:
        sale_id = await _reserve_through_batcher(client, product_factory)
        assert await client.exists(sale_keys(sale_id).meta) == 1  # in the socket's server
    finally:
        await client.aclose()
    assert await redis.dbsize() == 0  # nothing went to the test Redis on TCP


async def test_gateway_on_a_unix_socket(unix_socket, database, redis):
    """The whole gateway on FLASHSALE_REDIS_URL=unix://...: a hold over HTTP (the hot
    lane and the batcher) lands in the socket's server."""
    settings = make_settings(redis_url=f"unix://{unix_socket}?db=11")
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    try:
        api = Api(client)
        sale = await create_sale(api, quantity=2)
        buyer = await api.signup()
        await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                       headers=buyer["headers"], expect=201,
                       json={"quantity": 1, "idempotency_key": "order-1"})
        _, public = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}", expect=200)
        assert public["remaining"] == 1
    finally:
        await client.close()
    on_socket = aioredis.Redis(unix_socket_path=str(unix_socket), db=11)
    try:
        assert await on_socket.exists(sale_keys(sale["sale_id"]).meta) == 1
    finally:
        await on_socket.aclose()
    assert await redis.dbsize() == 0


async def test_tls_url_speaks_tls(tmp_path, certificate, product_factory):
    with tls_redis(tmp_path, certificate) as port:
        ca = certificate / "cert.pem"
        for url in (f"rediss://localhost:{port}/11?ssl_ca_certs={ca}",
                    f"rediss://127.0.0.1:{port}/11?ssl_cert_reqs=none"):
            client = await open_redis(make_settings(redis_url=url))
            try:
                await client.flushdb()
                await _reserve_through_batcher(client, product_factory)
            finally:
                await client.aclose()


async def test_tls_certificate_is_checked(tmp_path, certificate, product_factory):
    """The batcher checks the server's certificate as redis-py does: a name the certificate
    does not carry (default ssl_cert_reqs=required) is refused, not trusted."""
    with tls_redis(tmp_path, certificate) as port:
        ca = certificate / "cert.pem"
        # The same server by a name its certificate lacks.
        client = await open_redis(make_settings(
            redis_url=f"rediss://127.0.0.2:{port}/11?ssl_ca_certs={ca}", redis_cluster="0"))
        batcher = ScriptBatcher.beside(client)
        try:
            with pytest.raises(RedisConnectionError, match="certificate"):
                await asyncio.wait_for(batcher.call(SCRIPTS.release, ("k",), ("a",)), 5)
        finally:
            await batcher.drain()
            await client.aclose()


async def test_tls_cluster_batchers_speak_tls(tmp_path, certificate, product_factory):
    """A one-node Redis Cluster on TLS only: the per-node batchers and the slot map reads
    (engine/cluster.py) use TLS with the client's CA."""
    with tls_redis(tmp_path, certificate, "--tls-cluster", "yes", "--cluster-enabled", "yes",
                   # Its own bus port: the default (port + 10000) may be past 65535.
                   "--cluster-port", str(free_port()),
                   "--cluster-config-file", str(tmp_path / "nodes.conf")) as port:
        ca = certificate / "cert.pem"
        seed = aioredis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))
        try:
            await seed.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while (await seed.cluster("INFO"))["cluster_state"] != "ok":
                assert time.monotonic() < deadline, "the one-node cluster did not come up"
                await asyncio.sleep(0.1)
        finally:
            await seed.aclose()
        # ``auto``: INFO over TLS finds a cluster node.
        client = await open_redis(make_settings(
            redis_url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"))
        try:
            assert isinstance(client, aioredis.RedisCluster)
            await client.initialize()
            assert isinstance(ClusterScriptBatcher.beside(client), ClusterScriptBatcher)
            await _reserve_through_batcher(client, product_factory)
        finally:
            await client.aclose()


def test_what_the_batcher_cannot_do_is_refused_at_start():
    class Tunnelled(aioredis.Connection):
        pass

    pool = aioredis.ConnectionPool(connection_class=Tunnelled, host="127.0.0.1", port=1)
    with pytest.raises(Misconfigured, match="cannot connect the way Tunnelled"):
        ScriptBatcher.beside(aioredis.Redis(connection_pool=pool))
    missing = aioredis.Redis.from_url("rediss://localhost:1/0?ssl_ca_certs=/nonexistent.pem")
    with pytest.raises(Misconfigured, match="TLS"):
        ScriptBatcher.beside(missing)
