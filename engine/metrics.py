"""The gateway's Prometheus metrics (HTTP, admission, checkout) and what every process
shares: one registry per process, no ``_created`` series, the exposition.

Each long-running process exports only its own series: the gateway registers these into
``GATEWAY``; the reconciler keeps its own registry (reconciler/metrics.py), so a dead
reconciler can never look healthy through a gateway's zeros. With ``--workers N`` the
gateway runs prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR is set before
this module is imported) and gauges say how to combine the workers' values.

Labels are low-cardinality (route templates, outcomes, sale ids of live sales).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

# A `_created` series (a Unix time) reads like a business counter on a dashboard
# (`flashsale_orders_created{status="paid"} 1.79e9`) and doubles the series count.
disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)

# Shared by the gateway and the reconciler: created unregistered, registered by each
# process into its own registry.
DEPENDENCY_UP = Gauge(
    "flashsale_dependency_up", "1 when the dependency answered its last check (refreshed "
    "every few seconds)", ["dependency"], multiprocess_mode="min", registry=None)
SCRIPT_RELOADS = Counter(
    "flashsale_script_reloads", "Lua scripts loaded again after NOSCRIPT", ["script"],
    registry=None)
SHARED = (DEPENDENCY_UP, SCRIPT_RELOADS)

GATEWAY = CollectorRegistry()
for _collector in SHARED:
    GATEWAY.register(_collector)

# -- gateway -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "flashsale_http_requests", "HTTP requests answered", ["route", "method", "status"],
    registry=GATEWAY)
HTTP_DURATION = Histogram(
    "flashsale_http_request_duration_seconds", "HTTP request handling time", ["route"],
    buckets=LATENCY_BUCKETS, registry=GATEWAY)
WORKER_RESTARTS = Counter(
    "flashsale_gateway_worker_restarts", "Gateway workers replaced after they died",
    registry=GATEWAY)

# -- admission (engine, on the gateway's hot path) ---------------------------------------
ADMISSIONS = Counter(
    "flashsale_admissions", "Reservation attempts by outcome", ["outcome"], registry=GATEWAY)
RESERVATION_LATENCY = Histogram(
    "flashsale_reservation_latency_seconds", "Time to answer a reservation attempt",
    buckets=LATENCY_BUCKETS, registry=GATEWAY)

# -- waiting rooms (per sale, as of the last join or look) --------------------------------
ROOM_WAITING = Gauge(
    "flashsale_room_waiting", "Tickets waiting in line", ["sale_id"],
    multiprocess_mode="mostrecent", registry=GATEWAY)
ROOM_PASSES_LIVE = Gauge(
    "flashsale_room_passes_live", "Queue passes not yet expired", ["sale_id"],
    multiprocess_mode="mostrecent", registry=GATEWAY)
ROOM_ADMITTED = Gauge(
    "flashsale_room_admitted", "Queue passes issued since the room opened", ["sale_id"],
    multiprocess_mode="mostrecent", registry=GATEWAY)
ROOM_TOLD_SOLD_OUT = Gauge(
    "flashsale_room_told_sold_out", "Tickets told the sale is sold out", ["sale_id"],
    multiprocess_mode="mostrecent", registry=GATEWAY)
ROOM_ESTIMATED_WAIT = Gauge(
    "flashsale_room_estimated_wait_seconds",
    "Estimated wait of the last ticket in line at the measured admission rate (NaN unknown)",
    ["sale_id"], multiprocess_mode="mostrecent", registry=GATEWAY)

# -- orders ------------------------------------------------------------------------------
ORDERS = Counter("flashsale_orders", "Checkouts by final status", ["status"],
                 registry=GATEWAY)
CHECKOUT_DURATION = Histogram(
    "flashsale_checkout_duration_seconds", "Checkout saga duration",
    buckets=LATENCY_BUCKETS, registry=GATEWAY)


def process_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """Add the process_* series (CPU, memory, start time) to a single-process registry."""
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry = GATEWAY) -> tuple[bytes, str]:
    """The metrics text of this process's registry, or of all gateway workers in
    multiprocess mode (only gateway workers write to PROMETHEUS_MULTIPROC_DIR)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and registry is GATEWAY:
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
