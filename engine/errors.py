"""Typed errors. Each carries its HTTP status and contract code; the gateway's error
middleware is the one place that turns them into responses."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.exceptions


class FlashsaleError(Exception):
    status = 500
    code = "internal_error"
    message = "Internal error."
    close_connection = False  # True: answer, then close (the request was not fully read)

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or type(self).message
        self.details = details
        super().__init__(self.message)


class InvalidJSON(FlashsaleError):
    status, code, message = 400, "invalid_json", "The request body is not valid JSON."


class Unauthorized(FlashsaleError):
    status, code, message = 401, "unauthorized", "A valid bearer token is required."


class Forbidden(FlashsaleError):
    status, code, message = 403, "forbidden", "You are not allowed to do this."


class QueueRequired(Forbidden):
    code, message = "queue_required", "This sale has a waiting room: a queue pass is required."


class NotFound(FlashsaleError):
    status, code, message = 404, "not_found", "No such resource."


class MethodNotAllowed(FlashsaleError):
    status, code, message = 405, "method_not_allowed", "Method not allowed on this path."


class Conflict(FlashsaleError):
    status, code, message = 409, "conflict", "The request conflicts with the current state."


class SoldOut(Conflict):
    code, message = "sold_out", "The sale is sold out."


class SaleNotActive(Conflict):
    code, message = "sale_not_active", "The sale is not active."


class InvalidTransition(Conflict):
    code, message = "invalid_transition", "That state change is not allowed."


class ReservationExpired(Conflict):
    code, message = "reservation_expired", "The reservation has expired."


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    message = "A request with this idempotency key is still running."


class RequestTimeout(FlashsaleError):
    status, code, message = 408, "request_timeout", "The request body came too slowly."
    close_connection = True  # what remains of the body is never read


class PayloadTooLarge(FlashsaleError):
    status, code, message = 413, "payload_too_large", "The request body is too large."


class Unprocessable(FlashsaleError):
    status = 422


class ValidationFailed(Unprocessable):
    code, message = "validation_failed", "The request is not valid."

    @classmethod
    def at(cls, path: str, message: str) -> ValidationFailed:
        return cls(f"{path}: {message}", details=[{"path": path, "message": message}])


class CartEmpty(Unprocessable):
    code, message = "cart_empty", "The cart is empty."


class CartCheckoutInProgress(Conflict):
    code, message = "conflict", "This cart is being checked out."


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    message = "This idempotency key was used with a different request."


class PurchaseLimitExceeded(Unprocessable):
    code, message = "purchase_limit_exceeded", "This would exceed the per-user purchase limit."


class InsufficientStock(Unprocessable):
    code, message = "insufficient_stock", "Not enough stock."


class PaymentDeclined(Unprocessable):
    code, message = "payment_declined", "The payment was declined."


class CouponInvalid(Unprocessable):
    code, message = "coupon_invalid", "The coupon cannot be applied."


class RateLimited(FlashsaleError):
    status, code, message = 429, "rate_limited", "Too many requests; slow down."

    def __init__(self, retry_after: float = 1.0, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(FlashsaleError):
    status, code, message = 503, "unavailable", "A backing service is unavailable; retry shortly."

    def __init__(self, message: str | None = None, *, dependency: str | None = None) -> None:
        super().__init__(message, details={"dependency": dependency} if dependency else None)
        self.dependency = dependency
        self.retry_after = 1


class Misconfigured(FlashsaleError):
    """A configuration mistake a process cannot run with (a port in use, an unknown
    database or role, a bad URL): its message is the one line an operator reads."""
    code = "misconfigured"


# Postgres refusing who we are or what we ask for: a configuration mistake at start-up,
# an outage like any other once running (a database dropped under a live gateway).
POSTGRES_REFUSED = (asyncpg.InvalidCatalogNameError,
                    asyncpg.InvalidAuthorizationSpecificationError,
                    asyncpg.InvalidPasswordError)


class Redirected(redis.exceptions.ResponseError):
    """A ``MOVED`` or ``ASK`` reply to a script call (engine/batching.py), its text kept:
    the key's slot is served by another node of a Redis Cluster. The cluster batcher
    follows it (engine/cluster.py); anywhere else it is an outage (REDIS_DOWN)."""


class Refused(redis.exceptions.ResponseError):
    """Redis up but refusing the command for now (REFUSALS): an outage, not a bug."""


# Error replies of a Redis that cannot take the command for now, whoever sent it: loading
# its data after a restart, out of memory under `noeviction`, a replica, fewer replicas
# than `min-replicas-to-write`, its last save failed (`stop-writes-on-bgsave-error`),
# busy in a long script, its master down (a replica serving stale reads refuses).
REFUSALS = ("LOADING", "OOM", "READONLY", "NOREPLICAS", "MISCONF", "BUSY", "MASTERDOWN")


def reply_error(text: str) -> redis.exceptions.ResponseError:
    """A Redis error reply as callers tell it apart, its text kept whole (the script
    batchers' replyError): Redirected, Refused or a plain ResponseError."""
    code = text.partition(" ")[0]
    kind = (Redirected if code in ("MOVED", "ASK") else Refused if code in REFUSALS
            else redis.exceptions.ResponseError)
    exc = kind(text)
    exc.status_code = code  # as redis-py's parser sets it on the errors it types
    return exc


# Driver failures that mean "the service is not reachable right now", not a bug of ours.
# On a Redis Cluster also: CLUSTERDOWN and TRYAGAIN past the client's retries, a slot no
# node serves (a failover under way), no node reachable at all (RedisClusterException).
# Redis refusing for now (REFUSALS: redis-py's own types for some, Refused for the rest,
# engine.connections gives redis-py the codes it has no type for). A redirection (MOVED,
# ASK) that reaches a caller: a process talking to a cluster node as to one server, which
# it does only until it starts again as a cluster client
# (engine.connections.confirm_cluster_mode).
REDIS_REFUSING = (redis.exceptions.BusyLoadingError, redis.exceptions.OutOfMemoryError,
                  redis.exceptions.ReadOnlyError, redis.exceptions.MasterDownError, Refused)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
              redis.exceptions.RedisClusterException, *REDIS_REFUSING,
              redis.exceptions.AskError, Redirected)
# Postgres up but refusing for now, as REFUSALS are for Redis: read-only (a standby, a
# failover not done yet: 25006); out of disk, memory, connections or another resource
# (class 53); a shutdown, a start not finished, a cancel by an operator or a statement
# timeout, a dropped database (class 57); an I/O error (class 58).
POSTGRES_REFUSING = (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientResourcesError,
                     asyncpg.OperatorInterventionError, asyncpg.PostgresSystemError)
POSTGRES_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError,
                 *POSTGRES_REFUSING, *POSTGRES_REFUSED)
# Contention Postgres settled by failing one side: a deadlock victim, a transaction it
# could not serialize, a lock not granted within lock_timeout. Nothing is wrong and
# nothing was written; the same request again will most likely pass. Retried where a
# whole transaction can run again (orders.txn.retrying, the reconciler's batch);
# anywhere else the client is told to retry (as_contention: 409 ``conflict``).
POSTGRES_CONTENTION = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
                       asyncpg.LockNotAvailableError)
CONTENTION_MESSAGE = "The request met heavy contention; retry it."
# What asyncpg raises when Postgres drops a connection in the middle of a query or a
# transaction ("connection is closed", a protocol state it cannot go on from): an outage
# seen from inside a call. The gateway answers it 503, the reconciler retries the batch.
POSTGRES_BROKEN = (*POSTGRES_DOWN, asyncpg.InterfaceError, asyncpg.InternalClientError)


# What redis-py's BlockingConnectionPool raises (a ConnectionError) when no connection came
# free within its timeout: the process is busy, Redis is not down.
REDIS_POOL_EXHAUSTED = "No connection available."


def as_contention(exc: BaseException) -> Conflict | None:
    """The 409 that a lost fight for a Postgres lock means, or None."""
    return Conflict(CONTENTION_MESSAGE) if isinstance(exc, POSTGRES_CONTENTION) else None


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 that a driver failure means, or None when it is not an outage."""
    if (isinstance(exc, redis.exceptions.MaxConnectionsError)  # a cluster node's pool
            or (isinstance(exc, redis.exceptions.ConnectionError)
            and str(exc) == REDIS_POOL_EXHAUSTED)):
        return Unavailable("The service is busy (every Redis connection of this process is "
                           "in use); retry shortly.", dependency="redis_pool")
    if isinstance(exc, REDIS_DOWN):
        return Unavailable("Redis is unavailable; retry shortly.", dependency="redis")
    if isinstance(exc, POSTGRES_BROKEN):
        return Unavailable("Postgres is unavailable; retry shortly.", dependency="postgres")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Unavailable("A backing service timed out; retry shortly.")
    return None
