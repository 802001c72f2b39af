"""Apply ``migrations/NNNN_*.sql`` in order, once each, recorded in ``schema_migrations``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from engine.connections import database_name, with_database

_LOCK_ID = 0x666C6173  # advisory lock: two migrators never interleave


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    folder = resources.files("migrations")
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [Migration(f.name, f.read_text(encoding="utf-8")) for f in files]


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` when missing. True if it was created."""
    name = database_name(url)
    conn = await asyncpg.connect(with_database(url, "postgres"), timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def migrate(url: str) -> list[str]:
    """Bring the database at ``url`` up to date; return the names applied now."""
    await ensure_database(url)
    conn = await asyncpg.connect(url, timeout=10)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name TEXT PRIMARY KEY,
                   checksum TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        done = {r["name"]: r["checksum"]
                for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for migration in available_migrations():
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                    migration.name, migration.checksum,
                )
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        await conn.close()
    return applied_now
