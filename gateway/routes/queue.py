"""A flash sale's waiting room: join, look, and a live stream of the caller's ticket.

Redis only (engine/waiting_room.py); joining and looking cost O(log n) in the room's line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Literal

import msgspec
from aiohttp import web

from engine.codec import encode, error_body
from engine.errors import FlashsaleError, as_unavailable
from engine.waiting_room import Ticket
from gateway.api import Reply, RouteTable, path_int, principal
from gateway.context import services

routes = RouteTable("queue")

# How often the stream looks at the room, how often it proves it is alive, and how long
# one stream lasts before the client reconnects (a stream holds a connection).
STREAM_POLL_SECONDS = 0.5
STREAM_HEARTBEAT_SECONDS = 15.0
STREAM_MAX_SECONDS = 300.0


class QueueTicket(msgspec.Struct):
    ticket: str
    sale_id: int
    status: Literal["waiting", "admitted", "sold_out", "expired"]
    position: int | None
    estimated_wait_seconds: int | None
    queue_pass: str | None = msgspec.field(default=None, name="pass")
    pass_expires_at: datetime | None = None


def _answer(request: web.Request, ticket: Ticket) -> QueueTicket:
    queue_pass = services(request).room.pass_for(ticket)
    return QueueTicket(
        ticket=ticket.ticket, sale_id=ticket.sale_id, status=ticket.status,
        position=ticket.position, estimated_wait_seconds=ticket.estimated_wait_seconds,
        queue_pass=queue_pass,
        pass_expires_at=datetime.fromtimestamp(ticket.pass_expires_ms / 1000, UTC)
        if queue_pass else None)


@routes.post("/api/v1/sales/{sale_id}/queue", auth="owner", also=(200,),
             response=QueueTicket, status=201, errors=(429,))
async def join_queue(request: web.Request) -> QueueTicket | Reply:
    """Join a sale's waiting room (one ticket per user: joining again returns it, 200)."""
    room = services(request).room
    ticket = await room.join(path_int(request, "sale_id"), principal(request).user_id,
                             client=(request.remote or "") if room.join_rate else "")
    answer = _answer(request, ticket)
    return answer if ticket.created else Reply(answer, 200)


@routes.get("/api/v1/sales/{sale_id}/queue", auth="owner", response=QueueTicket)
async def look_at_queue(request: web.Request) -> QueueTicket:
    """Your ticket: position and estimated wait, or the pass once admitted."""
    room = services(request).room
    return _answer(request, await room.look(path_int(request, "sale_id"),
                                            principal(request).user_id))


@routes.get("/api/v1/sales/{sale_id}/queue/events", auth="owner")
async def stream_queue(request: web.Request) -> web.StreamResponse:
    """Your ticket as Server-Sent Events (text/event-stream): an event `ticket` whenever it
    changes, ending once it is admitted, sold out or expired."""
    room = services(request).room
    sale_id, user_id = path_int(request, "sale_id"), principal(request).user_id
    ticket = await room.look(sale_id, user_id)  # errors before the stream: plain JSON
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    started = last_sent = time.monotonic()
    previous = None
    with contextlib.suppress(ConnectionResetError):
        while True:
            body = encode(_answer(request, ticket))
            if body != previous:
                await response.write(b"event: ticket\ndata: " + body + b"\n\n")
                previous, last_sent = body, time.monotonic()
            elif time.monotonic() - last_sent >= STREAM_HEARTBEAT_SECONDS:
                await response.write(b": still waiting\n\n")
                last_sent = time.monotonic()
            if ticket.status != "waiting" or time.monotonic() - started > STREAM_MAX_SECONDS:
                break
            await asyncio.sleep(STREAM_POLL_SECONDS)
            try:
                ticket = await room.look(sale_id, user_id)
            except Exception as exc:
                error = exc if isinstance(exc, FlashsaleError) else as_unavailable(exc)
                if error is None:
                    raise
                await response.write(b"event: error\ndata: " + error_body(error) + b"\n\n")
                break
    return response
