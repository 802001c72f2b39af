"""Private Redis and Postgres servers for fault injection: started on free ports under
``.var/chaos/`` of the working tree, killed, truncated and restarted at will. Never the
shared ones: every fault lands on a process this module started."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / ".var" / "chaos"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port}") from None
            time.sleep(0.05)


class PrivateRedis:
    """``redis-server`` with AOF (``appendfsync`` as given, or none) in its own folder."""

    def __init__(self, name: str, *, appendfsync: str | None = "always") -> None:
        self.dir = VAR / f"redis-{name}-{os.getpid()}"
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, appendfsync: str | bool | None = False) -> PrivateRedis:
        if appendfsync is not False:
            self.appendfsync = appendfsync
        self.dir.mkdir(parents=True, exist_ok=True)
        durable = (["--appendonly", "yes", "--appendfsync", self.appendfsync]
                   if self.appendfsync else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appenddirname", "aof", *durable, "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, 15, "redis-server")
        self._wait_loaded()
        return self

    def _wait_loaded(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                 capture_output=True, text=True).stdout.strip()
            if out == "PONG":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis on {self.port} answers {out!r}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what the process had written to the kernel survives, as in any crash
        short of the OS's."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def aof_files(self) -> list[Path]:
        return sorted((self.dir / "aof").glob("*.incr.aof"))

    def truncate_aof(self, keep_fraction: float) -> int:
        """Simulate an OS crash under ``everysec``: the tail of the AOF that was not yet
        fsynced never reached the disk. Cuts the newest incremental file to
        ``keep_fraction`` of its size; returns the bytes cut."""
        files = self.aof_files()
        if not files:
            return 0
        last = files[-1]
        size = last.stat().st_size
        keep = int(size * keep_fraction)
        with last.open("r+b") as f:
            f.truncate(keep)
        return size - keep

    def wipe(self) -> None:
        """Lose everything (a restart without AOF)."""
        shutil.rmtree(self.dir / "aof", ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A Postgres 15 cluster of our own (initdb + pg_ctl, trust auth, 127.0.0.1 only).
    As root the server runs as the ``postgres`` user (Postgres refuses root); when that user
    cannot reach ``.var/`` the cluster lives in /tmp instead, as scripts/services.sh does."""

    def __init__(self, name: str) -> None:
        self.dir = VAR / f"pg-{name}-{os.getpid()}"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    @staticmethod
    def available() -> bool:
        if not (PG_BIN / "pg_ctl").exists():
            return False
        if os.geteuid() != 0:
            return True
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/flashsale_chaos"

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, cwd="/", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            return
        reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x",
                                    str(self.dir.parent)]).returncode == 0
        if not reachable:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = Path("/tmp") / f"flashsale-chaos-{self.dir.name}"
            self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)

    def start(self) -> PrivatePostgres:
        if not (self.dir / "PG_VERSION").exists():
            self._prepare()
            self._run("initdb", "-D", str(self.dir), "-U", "postgres", "-A", "trust",
                      "--no-sync", "--no-locale", "--encoding=UTF8")
        self._run("pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
