"""The waiting room on a Redis Cluster (scripts/cluster.sh, as tests/test_cluster.py):
rooms of sales on different masters, joined concurrently through the per-master batchers
and through direct EVALSHA; a pass used; the operator's figures read. Skipped, with the
reason, when the cluster cannot start here."""

from __future__ import annotations

import asyncio

import pytest

from engine.admission import Admission
from engine.waiting_room import RoomConfig, WaitingRoom, configure, room_figures
from tests.cluster_support import sales_on_distinct_masters
from tests.conftest import SECRET
from tests.test_cluster import load

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_rooms_on_several_masters(batching, cluster):
    sales = sales_on_distinct_masters(cluster, 3)
    for sale in sales:
        await configure(cluster, sale, RoomConfig(admission_rate=1000))
        await load(cluster, sale, 5)
    room = WaitingRoom(cluster, secret=SECRET, batching=batching)
    admission = Admission(cluster, batching=False)
    try:
        tickets = await asyncio.gather(*(room.join(sale, user) for sale in sales
                                         for user in range(1, 31)))
        for sale in sales:
            mine = [t for t in tickets if t.sale_id == sale]
            assert sorted(int(t.ticket.split("-")[1]) for t in mine) == list(range(1, 31))
            assert await room.config(sale) == RoomConfig(admission_rate=1000)
            looks = await asyncio.gather(*(room.look(sale, user) for user in range(1, 31)))
            admitted = [t for t in looks if t.status == "admitted"]
            assert len(admitted) == 5  # the stock, not more
            holder = admitted[0]
            room.signer.check(room.pass_for(holder), sale_id=sale, user_id=holder.user_id)
            await admission.reserve(sale, holder.user_id, 1, "k")
            await room.pass_used(sale, holder.user_id)
            figures = await room_figures(cluster, sale)
            assert (figures["waiting"], figures["passes_live"], figures["unused_passes"]) \
                == (25, 5, 4)
    finally:
        await room.close()
