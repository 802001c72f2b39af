"""engine.connections.confirm_cluster_mode: a process that had to guess whether Redis is a
cluster keeps asking until the node answers; one that knew does nothing."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from engine import connections
from engine.connections import ClusterModeChanged, cluster_mode, confirm_cluster_mode
from engine.settings import Settings

URL = "redis://127.0.0.1:1/0"


def answers(monkeypatch, *replies):
    """cluster_enabled answering each of ``replies`` in turn (an exception is raised)."""
    asked = []

    async def fake(settings):
        reply = replies[min(len(asked), len(replies) - 1)]
        asked.append(reply)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    monkeypatch.setattr(connections, "cluster_enabled", fake)
    return asked


async def test_a_guess_is_asked_again_until_answered_and_a_wrong_one_restarts(monkeypatch):
    settings = Settings(redis_url=URL)
    asked = answers(monkeypatch, None, redis.exceptions.AuthenticationError("not yet"),
                    None, True)
    assert await cluster_mode(settings) is False  # no answer: one server, guessed
    client = aioredis.Redis.from_url(URL)
    try:
        with pytest.raises(ClusterModeChanged, match="is a Redis Cluster node"):
            await confirm_cluster_mode(settings, client, every=0)
    finally:
        await client.aclose()
    assert len(asked) == 4  # start-up, then until an answer, refusals included
    await confirm_cluster_mode(settings, client, every=0)  # settled: nothing more to ask
    assert len(asked) == 4


async def test_a_known_mode_is_not_asked_again(monkeypatch):
    asked = answers(monkeypatch, False)
    settings = Settings(redis_url=URL)
    assert await cluster_mode(settings) is False
    await confirm_cluster_mode(settings, aioredis.Redis.from_url(URL), every=0)
    assert len(asked) == 1  # the start-up question only
    answers(monkeypatch, None)
    configured = Settings(redis_url=URL, redis_cluster="0")
    assert await cluster_mode(configured) is False
    await confirm_cluster_mode(configured, aioredis.Redis.from_url(URL), every=0)


async def test_readiness_waits_for_the_guess_to_be_confirmed(monkeypatch):
    """While the kind of Redis is a guess, readiness says Redis is not ready even if a
    PING answers (the process may be about to start again as the other kind)."""
    import fakeredis

    settings = Settings(redis_url=URL)
    answers(monkeypatch, None, False)
    assert await cluster_mode(settings) is False
    client = fakeredis.FakeAsyncRedis()
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="not confirmed"):
            await connections.redis_state(client, URL)
        # Only the URL guessed: a client of another Redis in the same process is ready.
        assert await connections.redis_state(client, "redis://elsewhere:6379/0") == {
            "redis": "ok"}
        await confirm_cluster_mode(settings, client, every=0)  # answered: one server
        assert await connections.redis_state(client, URL) == {"redis": "ok"}
    finally:
        await client.aclose()
