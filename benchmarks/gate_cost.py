"""What the gate costs Redis, read from a private redis-server's INFO commandstats and INFO
cpu (part of ``python -m benchmarks.admission``).

- Redis µs per admission and per refusal, in the same run, for: the script as it was
  before the lean-gate change (``benchmarks/baseline/reserve_before.lua``, on the key
  layout of then, loaded by ``baseline/load_tokens_before.lua``); the lean gate's
  one-attempt script, before attempts were batched (``baseline/reserve_lean.lua``); and
  today's ``lua/reserve.lua`` deciding at most 1, 8 and 64 attempts per run
  (engine/coalesce.py). Script runs and Redis commands per attempt (EVALSHA and the
  commands it runs), the script's own time (``cmdstat_evalsha`` usec per attempt) and the
  whole server process's CPU (user + sys, network included) per attempt.
- Engine admissions per second (``Admission.reserve``, 64 callers) with the one-attempt
  script and with batched runs, alternated in the same run.
- A sold-out sale: Redis commands for 3,000 attempts through gateway workers that listen
  for returned tokens (engine/refusals.py), against the same attempts without the flag.
- The delay from a returned token (release.lua) to the next admission on another worker.

The private server keeps other helpers' traffic out of server-wide figures.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from pathlib import Path

import redis.asyncio as aioredis

from benchmarks.common import latency_summary, private_redis, table
from engine.admission import Admission
from engine.errors import SoldOut
from engine.keys import ACTIVE_SALES, sale_keys
from engine.scripts import PRELUDE, Script, Scripts

BASELINE = Path(__file__).resolve().parent / "baseline"
_users = itertools.count(1)

# The scripts of before name nine keys (tokens, buyers, idem, seq and the rate-limit hash as
# keys of their own); the gate passes today's five. This shim, in front of each, spells the
# old names from today's meta key (same hash tag, so same slot): a few string joins,
# well under a microsecond, counted against the "before" figures.
_OLD_KEYS = """local _tag = string.sub(KEYS[1], 1, -6)
local K = {_tag .. ":meta", _tag .. ":tokens", _tag .. ":buyers", _tag .. ":idem",
  _tag .. ":holds", _tag .. ":res", _tag .. ":seq", _tag .. ":events", _tag .. ":rl"}
"""


def _before(name: str, keys: tuple[int, ...]) -> Script:
    source = (BASELINE / f"{name}_before.lua").read_text(encoding="utf-8")
    for new, old in enumerate(keys, start=1):
        source = source.replace(f"KEYS[{new}]", f"K[{old}]")
    return Script(f"{name}_before", "\n".join([PRELUDE, _OLD_KEYS, source]))


# The one-attempt scripts read ARGV as sale, user, quantity, key, rate, client, channel;
# the gate sends bucket name, rate, channel, then user, quantity, key, client per attempt.
_ONE_ARGV = """local A = {ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[2], ARGV[7], ARGV[3]}
"""


def _one_attempt(source: str) -> str:
    return _ONE_ARGV + re.sub(r"ARGV\[(\d)\]", r"A[\1]", source)


class _Before(Scripts):
    """Today's scripts with the reserve.lua of before the lean-gate change, on the key
    layout of then (its own load_tokens.lua)."""

    def __init__(self) -> None:
        super().__init__()
        self.reserve = Script("reserve_before", _one_attempt(
            _before("reserve", (1, 2, 3, 4, 5, 6, 7, 8, 9)).source))
        self.load_tokens = _before("load_tokens", (1, 2, 8))


class _Lean(Scripts):
    """Today's scripts with the one-attempt reserve.lua of the lean gate, before attempts
    were batched (``baseline/reserve_lean.lua``): one script run per attempt."""

    def __init__(self) -> None:
        super().__init__()
        lean = (BASELINE / "reserve_lean.lua").read_text(encoding="utf-8")
        self.reserve = Script("reserve_lean", "\n".join([PRELUDE, _one_attempt(lean)]))


class _Capped(Scripts):
    """Today's scripts, reserve.lua deciding at most ``cap`` attempts per run."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.reserve.batch = self.reserve.batch._replace(cap=cap)


def versions() -> tuple[tuple[str, Scripts], ...]:
    return (("before lean gate", _Before()), ("lean, 1 attempt/run", _Lean()),
            ("batched, cap 1", _Capped(1)), ("batched, cap 8", _Capped(8)),
            ("batched, cap 64", _Capped(64)))


async def _stats(redis: aioredis.Redis) -> tuple[dict, float]:
    info = await redis.info("commandstats")
    cpu = await redis.info("cpu")
    return info, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _delta(before: tuple[dict, float], after: tuple[dict, float]) -> dict:
    (c0, cpu0), (c1, cpu1) = before, after
    calls = {k: c1[k]["calls"] - c0.get(k, {}).get("calls", 0) for k in c1}
    usec = {k: c1[k]["usec"] - c0.get(k, {}).get("usec", 0) for k in c1}
    # INFO itself is counted: two per sample.
    calls["cmdstat_info"] = calls.get("cmdstat_info", 0) - 2
    return {"calls": {k: v for k, v in calls.items() if v}, "usec": usec,
            "cpu_s": cpu1 - cpu0}


async def _load(redis: aioredis.Redis, scripts: Scripts, sale: int, tokens: int) -> None:
    keys = sale_keys(sale)
    await redis.delete(*keys.all, *keys.legacy)
    await scripts.load_tokens(redis, keys.for_load, (
        1, "9.99", 0, 0, 1_000_000, 600_000, tokens, tokens, 0, 0, "bench"))
    await redis.sadd(ACTIVE_SALES, sale)  # as engine.sales does: a live sale
    await scripts.load_all(redis)


async def _attempts(admission: Admission, sale: int, n: int, concurrency: int) -> int:
    """n attempts by new buyers, ``concurrency`` at a time; returns the admissions."""
    admitted = 0
    for start in range(0, n, concurrency):
        users = [next(_users) for _ in range(min(concurrency, n - start))]
        answers = await asyncio.gather(
            *(admission.reserve(sale, u, 1, "k", client=f"10.{u}") for u in users),
            return_exceptions=True)
        for a in answers:
            if isinstance(a, BaseException) and not isinstance(a, SoldOut):
                raise a
            admitted += not isinstance(a, BaseException)
    return admitted


async def per_call_cost(redis: aioredis.Redis, *, calls: int, rounds: int = 3) -> list[dict]:
    """Each case for both scripts, alternated ``rounds`` times (a busy machine slows one
    run, not one version); the median of the rounds."""
    cases = (("admission", calls, 0), ("admission, rate limit on", calls, 50),
             ("refusal: sold out (script)", 0, 0),
             ("refusal: sold out (script), rate limit on", 0, 50))
    samples: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for version, scripts in versions():
            for label, tokens, rate in cases:
                sale = 900
                await _load(redis, scripts, sale, tokens)
                adm = Admission(redis, scripts=scripts, rate_limit=rate)  # no flags
                before = await _stats(redis)
                await _attempts(adm, sale, calls, 64)
                d = _delta(before, await _stats(redis))
                await adm.close()
                ev = d["calls"].get("cmdstat_evalsha", 0)
                samples.setdefault((version, label), []).append({
                    "commands": sum(d["calls"].values()) / calls,
                    "runs": ev / calls,
                    "script_us": d["usec"].get("cmdstat_evalsha", 0) / calls,
                    "process_cpu_us": d["cpu_s"] * 1e6 / calls})
                await redis.delete(*sale_keys(sale).all, *sale_keys(sale).legacy)
    return [{"script": version, "case": label, "attempts": calls,
             **{k: round(statistics.median(x[k] for x in runs), 2) for k in runs[0]}}
            for (version, label), runs in samples.items()]


async def _admits_per_second(admission: Admission, sale: int, seconds: float,
                             concurrency: int) -> float:
    calls = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal calls
        while time.perf_counter() < stop_at:
            await admission.reserve(sale, next(_users), 1, "k")
            calls += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


async def engine_rate(redis: aioredis.Redis, *, seconds: float = 2.0, rounds: int = 3,
                      concurrency: int = 64) -> list[dict]:
    """Admissions per second through ``Admission.reserve`` (auto-batched) with the
    one-attempt script and with attempts batched per run, alternated ``rounds`` times in
    the same run; the median of the rounds, and each round's ratio."""
    runs: dict[str, list[float]] = {"lean, 1 attempt/run": [], "batched, cap 64": []}
    for _ in range(rounds):
        for version, scripts in (("lean, 1 attempt/run", _Lean()),
                                 ("batched, cap 64", _Capped(64))):
            sale = 970
            await _load(redis, scripts, sale, 100_000_000)
            admission = Admission(redis, scripts=scripts)
            runs[version].append(await _admits_per_second(admission, sale, seconds,
                                                          concurrency))
            await admission.close()
            await redis.delete(*sale_keys(sale).all)
    lean = runs["lean, 1 attempt/run"]
    return [{"version": version, "callers": concurrency, "rounds": rounds,
             "per_second": round(statistics.median(rates)),
             "ratio": round(statistics.median(r / b for r, b in zip(rates, lean, strict=True)),
                            2)} for version, rates in runs.items()]


async def sold_out_commands(redis: aioredis.Redis, *, attempts: int = 3000) -> list[dict]:
    """Commands for ``attempts`` on a sold-out sale over two workers: without flags, with
    both listening when the sale sold out, and with one that joined after it (it reads the
    sold-out sales when it subscribes)."""
    rows = []
    for concurrency in (16, 64):
        for flags in ("off", "listening", "one joined late"):
            sale = 950 + len(rows)
            await _load(redis, Scripts(), sale, 10)
            workers = [Admission(redis), Admission(redis)]
            if flags != "off":
                await _listen(workers[0])
            if flags == "listening":
                await _listen(workers[1])
            await _attempts(workers[0], sale, 10, 10)  # sells out
            if flags == "one joined late":
                await _listen(workers[1])
            await asyncio.sleep(0.05)  # let the sell-out message arrive
            before = await _stats(redis)
            for half in workers:
                await _attempts(half, sale, attempts // 2, concurrency)
            d = _delta(before, await _stats(redis))
            for w in workers:
                await w.close()
            d["calls"].pop("cmdstat_subscribe", None)
            rows.append({"flags": flags, "concurrency": concurrency, "attempts": attempts,
                         "commands": sum(d["calls"].values()),
                         "script_runs": d["calls"].get("cmdstat_evalsha", 0)})
            await redis.delete(*sale_keys(sale).all)
    return rows


async def _listen(worker: Admission) -> None:
    await worker.start()
    if not await worker.refusals.wait_listening():
        raise RuntimeError("the token-return listener did not subscribe")


async def token_return_delay(redis: aioredis.Redis, *, rounds: int = 30) -> dict:
    """A hold is released through one client; another worker, whose sold-out flag is up,
    retries until it admits. The delay runs from sending the release to the admission."""
    sale = 990
    await _load(redis, Scripts(), sale, 1)
    worker, releaser = Admission(redis), Admission(redis, batching=False)
    await _listen(worker)
    hold = await worker.reserve(sale, next(_users), 1, "k")
    delays = []
    for _ in range(rounds):
        try:
            await worker.reserve(sale, next(_users), 1, "k")
            raise RuntimeError("the sale should be sold out")
        except SoldOut:
            pass
        if (sale, 0) not in worker.refusals._sold_out:
            raise RuntimeError("the sold-out flag should be up")
        released = asyncio.ensure_future(releaser.release(hold.reservation_id, user_id=None))
        started = time.perf_counter()
        while True:
            try:
                hold = await worker.reserve(sale, next(_users), 1, "k")
                break
            except SoldOut:
                await asyncio.sleep(0)
        delays.append(time.perf_counter() - started)
        await released
    await worker.close()
    await releaser.close()
    await redis.delete(*sale_keys(sale).all)
    return {"rounds": rounds, **latency_summary(delays), "max_ms": round(max(delays) * 1000, 3)}


async def measure(*, calls: int) -> dict | None:
    with private_redis() as url:
        if url is None:
            return None
        redis = aioredis.Redis.from_url(url)
        try:
            return {"per_call": await per_call_cost(redis, calls=calls),
                    "engine_rate": await engine_rate(redis),
                    "sold_out": await sold_out_commands(redis),
                    "token_return": await token_return_delay(redis)}
        finally:
            await redis.aclose()


def report(cost: dict | None) -> str:
    if cost is None:
        return "gate cost: skipped (no redis-server found for a private instance)"
    per_call = table(
        "Redis cost per attempt (private redis-server, 64 attempts in flight, median of 3 "
        "alternated rounds; runs = script runs per attempt, script = EVALSHA usec per "
        "attempt, process = server CPU user+sys per attempt)",
        ["reserve.lua", "case", "runs", "commands", "script µs", "process µs"],
        [[r["script"], r["case"], r.get("runs", 1.0), r["commands"], r["script_us"],
          r["process_cpu_us"]] for r in cost["per_call"]])
    rate = table(
        "Engine admissions/s, Admission.reserve at 64 callers (private redis-server, "
        "alternated rounds, median; ratio vs the one-attempt script in the same round)",
        ["reserve.lua", "callers", "admits/s", "ratio"],
        [[r["version"], r["callers"], r["per_second"], f"{r['ratio']:.2f}x"]
         for r in cost.get("engine_rate", [])])
    sold = table(
        "A sold-out sale: Redis commands for 3,000 attempts over two workers",
        ["flags", "attempts in flight", "commands", "script runs"],
        [[r["flags"], r["concurrency"], r["commands"], r["script_runs"]]
         for r in cost["sold_out"]])
    t = cost["token_return"]
    delay = (f"Returned token -> next admission on another worker: p50 {t['p50_ms']} ms, "
             f"p99 {t['p99_ms']} ms, max {t['max_ms']} ms over {t['rounds']} releases")
    return "\n\n".join([per_call, rate, sold, delay])
