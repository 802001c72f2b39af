"""The reservation record has one format for Lua (lua/prelude.lua) and Python
(engine/records.py): what one side writes, the other reads back field for field."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records import STATE_OF, ReservationRecord
from engine.scripts import PRELUDE

pytestmark = pytest.mark.fast

records = st.builds(
    ReservationRecord, user_id=st.integers(1, 2**63 - 1), quantity=st.integers(1, 10_000),
    state=st.sampled_from(sorted(STATE_OF.values())),
    expires_ms=st.integers(0, 2**53), order_id=st.none() | st.integers(1, 2**63 - 1))

# Lua reads the Python record and writes it again with its own formatter, returning both
# the fields it parsed and the text it wrote.
_ROUND_TRIP = PRELUDE + """
local u, q, s, x, o = parse_record(ARGV[1])
return {u, q, s, x, o, format_record(u, q, s, x, o)}
"""


@settings(max_examples=100, deadline=None)
@given(record=records)
async def test_lua_and_python_read_and_write_the_same_record(record) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        raw = record.format()
        u, q, s, x, o, written = await redis.eval(_ROUND_TRIP, 0, raw)
    finally:
        await redis.aclose()
    assert (int(u), int(q), STATE_OF[s], int(x)) == (
        record.user_id, record.quantity, record.state, record.expires_ms)
    assert (int(o) if o else None) == record.order_id
    assert written == raw.encode()
    assert ReservationRecord.parse(written) == record


@given(st.lists(st.integers(0, 4_102_444_800_000), min_size=1, max_size=20))
def test_a_holds_expiry_is_its_own_whatever_came_before(expiries) -> None:
    """Hold.expires_at remembers the last expiry it converted (a script run's holds share
    one): each hold still gets exactly its own, in any order, repeats included."""
    from datetime import UTC, datetime

    from engine.admission import Hold

    for ms in [*expiries, *reversed(expiries)]:
        hold = Hold(reservation_id="1-1", sale_id=1, quantity=1, status="held",
                    expires_ms=ms)
        assert hold.expires_at == datetime.fromtimestamp(ms / 1000, UTC)
