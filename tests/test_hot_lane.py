"""The hot lane (gateway/hot.py) answers what aiohttp would have answered, byte stream for
byte stream: generated requests go to a server with the lane and to one without it (same
database and Redis), and their answers are compared; generated streams of several
requests, cut at generated points, get every answer in order; a client that hangs up,
``Connection: close`` and a shutdown with an answer in flight are handled as aiohttp
handles them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine import metrics
from gateway.app import create_app
from gateway.context import SERVICES
from tests.conftest import Api, GatewayServer, assert_error, create_sale


async def _exchange(port: int, chunks: list[bytes], answers: int,
                    pause: float = 0.0) -> tuple[list[tuple[int, dict, bytes]], bool]:
    """Send ``chunks`` on one connection (``pause`` between them), read ``answers``
    responses; also whether the server then closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            assert re.match(r"HTTP/1\.[01] \d{3} ", lines[0]), lines[0]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    assert name.lower() not in headers, f"header {name} twice"
                    headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            out.append((status, headers, body))
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
        except TimeoutError:
            closed = False
        return out, closed
    finally:
        writer.close()


def _post(path: str, token: str, body: bytes, *, extra: str = "",
          version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def _lane_count() -> float:
    metrics.flush()
    total = 0.0
    for family in metrics.HOT_LANE_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


@pytest.fixture
async def plain(settings, database) -> TestClient:
    """The same gateway with the lane off: what aiohttp answers."""
    client = TestClient(GatewayServer(create_app(dataclasses.replace(settings,
                                                                      hot_lane=False))))
    await client.start_server()
    yield client
    await client.close()


def _slow_redis(app, gate: asyncio.Event | None = None, delay: float = 0.0) -> None:
    """Make the app's reservation script calls wait (for ``gate``, or ``delay`` s): what
    arrives meanwhile arrives while a lane request is being answered."""
    admission = app[SERVICES].admission
    if hasattr(admission, "real_run"):
        return  # slowed once already (a Hypothesis test's earlier example)
    real_run = admission.real_run = admission._run

    def slow_run(script, keys, args):
        async def later():
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(delay)
            return await real_run(script, keys, args)
        return later()

    admission._run = slow_run


@pytest.fixture
async def sale_and_buyer(api: Api) -> tuple[int, dict]:
    sale = await create_sale(api, quantity=100_000, per_user_limit=1000)
    return sale["sale_id"], await api.signup()


# A request to the reservation route, varied where a stranger would vary it: the id in the
# path, the body (valid, wrong, hostile), the token, extra or odd headers, the version.
_BODIES = st.one_of(
    st.builds(lambda q, k: json.dumps({"quantity": q, "idempotency_key": k}).encode(),
              st.integers(-2, 12), st.text(min_size=0, max_size=12)),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"quantity":1}', b'{"quantity":"1"}',
                     b'{"quantity":1,"idempotency_key":"a","extra":1}',
                     b'{"quantity":1,"idempotency_key":"a\\u0000b"}',
                     b'{"quantity":1,"idempotency_key":"\xff"}',
                     b'{"quantity":1e400,"idempotency_key":"k"}']),
    st.binary(max_size=40))
_EXTRA = st.lists(st.sampled_from([
    "X-Request-ID: abc-123\r\n", "X-Request-ID: bad id\r\n", "Accept: */*\r\n",
    "Connection: keep-alive\r\n", "Connection: close\r\n", "Expect: 100-continue\r\n",
    "Content-Encoding: gzip\r\n", "Transfer-Encoding: chunked\r\n", "User-Agent: x\r\n",
    "authorization: Bearer other\r\n", "X-Forwarded-For: 10.0.0.1\r\n"]),
    max_size=3, unique=True)
_PATHS = st.sampled_from(["{sale}", "999999", "0", "abc", "\uff11", "%31", "{sale}?a=1",
                          "{sale}/../{sale}", "{sale}.json", "00{sale}", "9" * 30])


@hsettings(max_examples=120, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES, extra=_EXTRA, path=_PATHS, token=st.sampled_from(["user", "none", "junk"]),
       version=st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
async def test_the_lane_answers_what_aiohttp_answers(
        app_client, plain, sale_and_buyer, body, extra, path, token, version) -> None:
    sale_id, buyer = sale_and_buyer
    bearer = {"user": buyer["token"], "none": "", "junk": "x.y.z"}[token]
    target = f"/api/v1/sales/{path.format(sale=sale_id)}/reservations"
    if "chunked" in "".join(extra):
        wire_body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
                     if body else b"0\r\n\r\n")
    else:
        wire_body = body
    answers, counted = [], []
    for client in (app_client, plain):
        before = _lane_count()
        # Each server its own key: a replay would make the second answer differ (200).
        varied = wire_body.replace(b'"idempotency_key": "', b'"idempotency_key": "'
                                   + str(client.port).encode() + b"-")
        raw = _post(target, bearer, varied, extra="".join(extra), version=version)
        if "chunked" in "".join(extra):
            raw = raw.replace(f"Content-Length: {len(varied)}\r\n".encode(), b"")
        out, closed = await _exchange(client.port, [raw], 1)
        answers.append((out[0], closed))
        counted.append(_lane_count() - before)
    # The lane took exactly the plain HTTP/1.1 requests on its route, on a new connection.
    plain_request = (version == "1.1" and re.fullmatch(r"[0-9a-z]+", path.format(sale=1))
                     and not {"Expect", "Content-Encoding", "Transfer-Encoding"}
                     & {e.split(":")[0] for e in extra})
    assert counted == [1 if plain_request else 0, 0], (counted, path, extra, version)
    (lane, lane_closed), (aio, aio_closed) = answers
    assert lane[0] == aio[0], (target, body, extra, lane, aio)
    same_headers = {"content-type", "content-length", "connection", "retry-after"}
    if not (lane[0] == 201 or lane[0] == 200):
        assert lane[2] == aio[2] or json.loads(lane[2])["error"]["code"] == json.loads(
            aio[2])["error"]["code"], (lane, aio)
        same_headers.discard("content-length")  # an error message may quote the input
    else:
        assert set(json.loads(lane[2])) == set(json.loads(aio[2]))
    for name in same_headers:
        assert lane[1].get(name) == aio[1].get(name), (name, lane, aio)
    assert set(lane[1]) == set(aio[1]), (lane[1], aio[1])
    assert lane_closed == aio_closed, (extra, version, lane, aio)


async def test_a_plain_reservation_is_answered_in_the_lane(app_client, sale_and_buyer) -> None:
    sale_id, buyer = sale_and_buyer
    before = _lane_count()
    target = f"/api/v1/sales/{sale_id}/reservations"
    requests = [_post(target, buyer["token"], b'{"quantity":1,"idempotency_key":"k%d"}' % i)
                for i in range(5)]
    out, closed = await _exchange(app_client.port, requests, 5, pause=0.05)
    assert [status for status, _, _ in out] == [201] * 5 and not closed
    assert _lane_count() - before == 5
    # Escapes, a query or HTTP/1.0 go to aiohttp: answered, not in the lane.
    for odd in (_post(target.replace(str(sale_id), f"%3{str(sale_id)[0]}{str(sale_id)[1:]}"),
                      buyer["token"], b'{"quantity":1,"idempotency_key":"e"}'),
                _post(target + "?x=1", buyer["token"], b'{"quantity":1,"idempotency_key":"q"}'),
                _post(target, buyer["token"], b'{"quantity":1,"idempotency_key":"v"}',
                      version="1.0")):
        out, _ = await _exchange(app_client.port, [odd], 1)
        assert out[0][0] == 201, out
    assert _lane_count() - before == 5


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["reserve", "replay", "bad", "get", "nowhere"]),
                      min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 2000), max_size=5), pause=st.sampled_from([0, 0.002]))
async def test_pipelined_requests_cut_anywhere_are_answered_in_order(
        app_client, sale_and_buyer, kinds, cuts, pause) -> None:
    """Several requests on one connection, sent as one stream cut at generated points:
    lane requests, aiohttp requests and half requests mixed, every answer in order."""
    sale_id, buyer = sale_and_buyer
    target = f"/api/v1/sales/{sale_id}/reservations"
    stream, expected = b"", []
    for i, kind in enumerate(kinds):
        if kind in ("reserve", "replay"):
            key = "same" if kind == "replay" else f"p{i}-{len(cuts)}-{pause}"
            stream += _post(target, buyer["token"],
                            b'{"quantity":1,"idempotency_key":"%s"}' % key.encode())
            expected.append((200, 201))
        elif kind == "bad":
            stream += _post(target, buyer["token"], b'{"quantity":"x"}')
            expected.append((422,))
        elif kind == "get":
            stream += _get(f"/api/v1/sales/{sale_id}")
            expected.append((200,))
        else:
            stream += _get("/nowhere")
            expected.append((404,))
    _slow_redis(app_client.server.app, delay=0.05)
    points = sorted({c % len(stream) for c in cuts} - {0})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    out, closed = await _exchange(app_client.port, chunks, len(kinds), pause=pause)
    for (status, _, body), kind, allowed in zip(out, kinds, expected, strict=True):
        assert status in allowed, (kinds, out)
        answer = json.loads(body)
        if kind in ("reserve", "replay"):
            assert answer["sale_id"] == sale_id and "reservation_id" in answer, (kinds, out)
        elif kind == "get":
            assert answer["sale_id"] == sale_id and "reservation_id" not in answer, (kinds, out)
        else:
            assert_error(answer, "validation_failed" if kind == "bad" else "not_found")
    assert not closed


async def test_connection_close_and_a_client_that_hangs_up(app_client, sale_and_buyer,
                                                           caplog) -> None:
    sale_id, buyer = sale_and_buyer
    target = f"/api/v1/sales/{sale_id}/reservations"
    before = _lane_count()
    out, closed = await _exchange(app_client.port, [_post(
        target, buyer["token"], b'{"quantity":1,"idempotency_key":"c"}',
        extra="Connection: close\r\n")], 1)
    assert out[0][0] == 201 and out[0][1]["connection"] == "close" and closed
    # Hang up before the answer: the hold is made (as with aiohttp), nothing is logged.
    caplog.set_level(logging.WARNING)
    for i in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", app_client.port)
        writer.write(_post(target, buyer["token"],
                           b'{"quantity":1,"idempotency_key":"gone%d"}' % i))
        writer.close()
    await asyncio.sleep(0.3)
    assert _lane_count() - before >= 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # The server still answers.
    out, _ = await _exchange(app_client.port, [_post(
        target, buyer["token"], b'{"quantity":1,"idempotency_key":"after"}')], 1)
    assert out[0][0] == 201


async def test_shutdown_waits_for_an_answer_in_flight(settings, database, sale_and_buyer,
                                                      redis) -> None:
    """A graceful stop with a lane request waiting on Redis: the answer is written before
    the connection closes, as aiohttp does for its own requests."""
    sale_id, buyer = sale_and_buyer
    server = GatewayServer(create_app(settings))
    client = TestClient(server)
    await client.start_server()
    gate = asyncio.Event()
    _slow_redis(server.app, gate)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(_post(f"/api/v1/sales/{sale_id}/reservations", buyer["token"],
                       b'{"quantity":1,"idempotency_key":"inflight"}'))
    await writer.drain()
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0.1)
    gate.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await closing
    assert re.match(rb"HTTP/1.1 201 ", head), head
    writer.close()



def _lane_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "HotConnection._lane"]


async def test_one_lane_task_per_connection_gone_with_it(app_client, sale_and_buyer) -> None:
    """Lane answers on a keep-alive connection share one task, which ends when the
    connection does (closed by the client, or by the server after ``Connection: close``):
    none is left behind, however many connections came and went."""
    sale_id, buyer = sale_and_buyer
    target = f"/api/v1/sales/{sale_id}/reservations"
    assert _lane_tasks() == []
    conns = [await asyncio.open_connection("127.0.0.1", app_client.port) for _ in range(8)]
    for round_ in range(3):
        for i, (reader, writer) in enumerate(conns):
            writer.write(_post(target, buyer["token"],
                               b'{"quantity":1,"idempotency_key":"t%d-%d"}' % (i, round_)))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 201 "), head
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            await reader.readexactly(length)
        assert len(_lane_tasks()) == len(conns)  # one each, waiting for the next request
    for _, writer in conns[:4]:
        writer.close()
    out, closed = await _exchange(app_client.port, [_post(
        target, buyer["token"], b'{"quantity":1,"idempotency_key":"last"}',
        extra="Connection: close\r\n")], 1)
    assert out[0][0] == 201 and closed
    for _ in range(100):
        if len(_lane_tasks()) == 4:
            break
        await asyncio.sleep(0.02)
    assert len(_lane_tasks()) == 4
    for _, writer in conns[4:]:
        writer.close()
    for _ in range(100):
        if not _lane_tasks():
            break
        await asyncio.sleep(0.02)
    assert _lane_tasks() == []
