"""The cluster client's settings and its failover-safe error mapping, without a server."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.connections import FailoverSafeCluster, create_redis, redis_db
from engine.errors import as_unavailable
from engine.settings import Settings


def test_cluster_setting_values():
    assert Settings(redis_cluster="auto").cluster_mode is None
    assert Settings(redis_cluster="1").cluster_mode is True
    assert Settings(redis_cluster="off").cluster_mode is False
    with pytest.raises(ValueError, match="FLASHSALE_REDIS_CLUSTER='maybe' is not 1, 0 or auto"):
        Settings(redis_cluster="maybe")
    assert Settings.from_env({"FLASHSALE_REDIS_CLUSTER": "1"}).cluster_mode is True


def test_db_of_a_url():
    assert redis_db("redis://h:1/7") == 7
    assert redis_db("redis://h:1") == 0


CLOSED_UNDER_US = [
    # redis-py closed every connection on CLUSTERDOWN; a command in flight on another task
    AttributeError("'NoneType' object has no attribute 'writelines'"),
    # uvloop, writing on a connection whose node died and came back (a reconciler started
    # during a failover died of this one)
    RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False "
                 "0x5640>; the handler is closed"),
]


@pytest.mark.parametrize("error", CLOSED_UNDER_US, ids=lambda e: type(e).__name__)
async def test_a_connection_closed_under_a_command_is_an_outage(monkeypatch, error):
    """A command that meets its connection closed must reach callers as a connection
    error (503 / retry), never as a 500 or a dead reconciler."""
    client = create_redis(Settings(redis_url="redis://127.0.0.1:1/0"), cluster=True)
    assert isinstance(client, FailoverSafeCluster)

    async def closed_under_us(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(aioredis.RedisCluster, "execute_command", closed_under_us)
    with pytest.raises(RedisConnectionError) as caught:
        await client.get("k")
    assert as_unavailable(caught.value).dependency == "redis"
    monkeypatch.setattr(aioredis.cluster.ClusterPipeline, "execute", closed_under_us)
    pipe = client.pipeline(transaction=False)
    pipe.get("k")
    with pytest.raises(RedisConnectionError):
        await pipe.execute()


async def test_any_other_runtime_error_is_not_taken_for_an_outage(monkeypatch):
    client = create_redis(Settings(redis_url="redis://127.0.0.1:1/0"), cluster=True)

    async def bug(self, *args, **kwargs):
        raise RuntimeError("Event loop is closed")

    monkeypatch.setattr(aioredis.RedisCluster, "execute_command", bug)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        await client.get("k")
