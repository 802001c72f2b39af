"""Group commit for the gate: the reservation attempts on one sale made in one event-loop
turn go to Redis as ONE run of ``lua/reserve.lua``, which decides them in arrival order.

EVALSHA has a fixed cost in Redis (about 5 µs here, a third of an admission's): paid once
per batch instead of once per attempt. The auto-batcher (engine/batching.py) calls
``coalesce`` on every write it is about to send; the cluster batcher (engine/cluster.py)
uses one such batcher per master, so both paths coalesce here and only here.

A script takes part when it declares a ``Batch`` shape: its arguments are ``common``
values shared by the whole batch followed by ``fields`` values per attempt, and it answers
one list with one answer per attempt. Calls merge when they name the same script, the
same keys and the same common arguments; a batch holds at most ``cap`` attempts so no
script runs long. Each caller still gets its own answer, or, when the whole run fails
(NOSCRIPT is reloaded and resent as one; a lost connection, MOVED, a timeout), the same
exception as every other caller of that batch, as it would alone.

On a sale split into buckets each bucket is its own key set, so its own batch. A merged
run takes the place of its first attempt in the write: the calls of one turn
were all made before any was answered, so none can depend on another's order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol


class Batch(NamedTuple):
    common: int  # leading arguments shared by every attempt of a batch
    fields: int  # arguments per attempt after those
    cap: int = 64  # attempts per script run at most


class Call(Protocol):
    script: Any
    keys: Any
    args: Any
    members: list | None
    solo: bool


def coalesce(queue: list[Call], merged: Callable[[Any, Any, list], Call]) -> list[Call]:
    """``queue`` in arrival order, with the calls of one batchable script on one key set and
    common arguments merged into ``merged(script, keys, common_args)`` items (their
    ``members`` the original calls, in order; ``args`` the common values followed by every
    member's own). Calls that cannot merge (other scripts, raw commands, a call that must
    follow its ASKING) keep their place."""
    groups: dict[tuple, Call] = {}
    out: list[Call] = []
    for item in queue:
        script = item.script
        shape: Batch | None = getattr(script, "batch", None) if script is not None else None
        if shape is None or item.solo:
            out.append(item)
            continue
        common = item.args[:shape.common]
        key = (script.sha, item.keys, *common)
        group = groups.get(key)
        if group is None or len(group.members) >= shape.cap:
            group = groups[key] = merged(script, item.keys, list(common))
            out.append(group)
        group.members.append(item)
        group.args.extend(item.args[shape.common:])
    return out
