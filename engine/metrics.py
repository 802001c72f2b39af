"""Every Prometheus metric of the project, defined in one place.

Labels are low-cardinality (route templates, outcomes, sale ids of live sales). With
``--workers N`` the gateway runs prometheus_client's multiprocess mode (the environment
variable PROMETHEUS_MULTIPROC_DIR is set before this module is imported) and gauges say
how to combine the workers' values.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5)

# -- gateway -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "flashsale_http_requests", "HTTP requests answered", ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "flashsale_http_request_duration_seconds", "HTTP request handling time", ["route"],
    buckets=_LATENCY_BUCKETS)
DEPENDENCY_UP = Gauge(
    "flashsale_dependency_up", "1 when the dependency answered its last check",
    ["dependency"], multiprocess_mode="min")

# -- admission (engine) ------------------------------------------------------------------
ADMISSIONS = Counter(
    "flashsale_admissions", "Reservation attempts by outcome", ["outcome"])
RESERVATION_LATENCY = Histogram(
    "flashsale_reservation_latency_seconds", "Time to answer a reservation attempt",
    buckets=_LATENCY_BUCKETS)
TOKENS_REMAINING = Gauge(
    "flashsale_sale_tokens_remaining", "Tokens left in Redis per sale", ["sale_id"],
    multiprocess_mode="mostrecent")
HOLDS_LIVE = Gauge(
    "flashsale_sale_holds_live", "Unpaid holds per sale", ["sale_id"],
    multiprocess_mode="mostrecent")
SCRIPT_RELOADS = Counter(
    "flashsale_script_reloads", "Lua scripts loaded again after NOSCRIPT", ["script"])

# -- reconciler --------------------------------------------------------------------------
EVENTS_APPLIED = Counter(
    "flashsale_reconciler_events_applied", "Sale events applied to Postgres", ["type"])
BATCH_SIZE = Histogram(
    "flashsale_reconciler_batch_size", "Events per Postgres transaction",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000))
PENDING_ENTRIES = Gauge(
    "flashsale_reconciler_pending_entries", "Stream entries not yet applied", ["sale_id"])
OLDEST_PENDING_AGE = Gauge(
    "flashsale_reconciler_oldest_pending_age_seconds",
    "Age of the oldest event not yet applied to Postgres")
POSTGRES_ERRORS = Counter(
    "flashsale_reconciler_postgres_errors", "Failed batch writes to Postgres")
REDIS_ERRORS = Counter(
    "flashsale_reconciler_redis_errors", "Failed reads or acks against Redis")
CLAIMED = Counter(
    "flashsale_reconciler_claimed", "Pending entries claimed from dead consumers")
HOLDS_EXPIRED = Counter(
    "flashsale_reconciler_holds_expired", "Holds returned to stock by the sweeper")

# -- orders ------------------------------------------------------------------------------
ORDERS = Counter("flashsale_orders", "Checkouts by final status", ["status"])
CHECKOUT_DURATION = Histogram(
    "flashsale_checkout_duration_seconds", "Checkout saga duration",
    buckets=_LATENCY_BUCKETS)


def exposition() -> tuple[bytes, str]:
    """The metrics text of this process, or of all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
