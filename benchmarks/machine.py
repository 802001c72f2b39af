"""What the machine did during a benchmark run: CPU seconds per process, how busy the
machine was and how much of that was the benchmark (CpuWatch), and autovacuum's policy
applied by hand (Autovacuum) where the shared server runs with it off."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from engine.settings import Settings

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); 0 once it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWatch:
    """Once a second: how busy the machine was, and how much of that was this benchmark
    (load generator, gateway, the Postgres backends of its database). On a shared machine
    the rest ("others") explains a stall that is not the system's doing."""

    def __init__(self, gateway_pid: int, database: str) -> None:
        self.gateway_pid = gateway_pid
        self.database = database  # Postgres backends show it in their command line
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = list(map(int, open("/proc/stat").readline().split()[1:]))
        return sum(values) - values[3] - values[4], sum(values)  # busy, total (jiffies)

    def _ours(self) -> dict[int, float]:
        """CPU seconds so far of each process of this benchmark."""
        mine = {os.getpid(): cpu_seconds(os.getpid()),
                self.gateway_pid: cpu_seconds(self.gateway_pid)}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if self.database in open(f"/proc/{pid}/cmdline").read():
                        mine[int(pid)] = cpu_seconds(int(pid))
                except OSError:
                    continue
        return mine

    async def _run(self) -> None:
        tick = TICKS
        busy, total, ours = *self._machine(), self._ours()
        while True:
            await asyncio.sleep(1.0)
            busy2, total2, ours2 = *self._machine(), self._ours()
            span = (total2 - total) / tick  # CPU-seconds available in the interval
            used = (busy2 - busy) / tick
            mine = sum(t - ours.get(pid, 0.0) for pid, t in ours2.items())  # new pids: all
            self.samples.append({"busy_pct": round(min(100.0, 100 * used / span), 1),
                                 "others_pct": round(min(100.0, 100 * max(0.0, used - mine)
                                                         / span), 1)})
            busy, total, ours = busy2, total2, ours2

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Autovacuum:
    """Autovacuum's policy, applied to the benchmark's database every minute: VACUUM a
    table once dead rows pass 50 + 20% of its rows, ANALYZE it once changes pass 50 + 10%,
    throttled by the same cost delay. The shared development server runs with autovacuum
    off; without this, dead rows and plans made on empty tables pile up over a long run."""

    VACUUM_BASE, VACUUM_SCALE, ANALYZE_BASE, ANALYZE_SCALE = 50, 0.2, 50, 0.1

    def __init__(self, settings: Settings, *, every: float = 60.0) -> None:
        self.url = settings.database_url
        self.every = every  # autovacuum_naptime's default
        self.vacuums = self.analyzes = 0
        self._task: asyncio.Task | None = None

    async def once(self, *, analyze_all: bool = False, pause: float = 0.0) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200")
            if analyze_all:
                await conn.execute("ANALYZE")
                self.analyzes += 1
            rows = await conn.fetch(
                "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze"
                " FROM pg_stat_user_tables")
            for r in rows:
                table = '"' + r["relname"].replace('"', '""') + '"'
                if r["n_dead_tup"] > self.VACUUM_BASE + self.VACUUM_SCALE * r["n_live_tup"]:
                    await conn.execute(f"VACUUM (ANALYZE) {table}")
                    self.vacuums += 1
                    self.analyzes += 1
                elif (r["n_mod_since_analyze"]
                      > self.ANALYZE_BASE + self.ANALYZE_SCALE * r["n_live_tup"]):
                    await conn.execute(f"ANALYZE {table}")
                    self.analyzes += 1
                else:
                    continue
                await asyncio.sleep(pause)  # one table at a time, as one worker would
        finally:
            await conn.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.once(pause=1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
