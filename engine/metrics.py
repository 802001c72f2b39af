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
from bisect import bisect_left

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
HOT_LANE_REQUESTS = Counter(
    "flashsale_http_hot_lane_requests",
    "HTTP requests the gateway answered in its hot lane, without aiohttp's request objects "
    "(also counted in flashsale_http_requests)", ["route"], registry=GATEWAY)
WORKER_RESTARTS = Counter(
    "flashsale_gateway_worker_restarts", "Gateway workers replaced after they died",
    registry=GATEWAY)

# -- admission (engine, on the gateway's hot path) ---------------------------------------
ADMISSIONS = Counter(
    "flashsale_admissions", "Reservation attempts by outcome", ["outcome"], registry=GATEWAY)
RESERVATION_LATENCY = Histogram(
    "flashsale_reservation_latency_seconds", "Time to answer a reservation attempt",
    buckets=LATENCY_BUCKETS, registry=GATEWAY)
BUCKET_STEALS = Counter(
    "flashsale_bucket_steals", "Transfers of tokens to a buyer's empty home bucket "
    "(engine/buckets.py), by whether any unit was left to move", ["moved"], registry=GATEWAY)

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


# -- the hot path's tallies ----------------------------------------------------------------
# A Prometheus counter step takes a lock (and in multiprocess mode writes a shared file),
# a histogram observation two locks and a walk over the buckets: about 4 µs of the
# reservation path's per-request work. In one process the gateway counts in plain ints
# instead and hands the sums to the same series when they are read (``exposition``), so
# a scrape shows exactly what a direct update would have. With several workers
# (PROMETHEUS_MULTIPROC_DIR) a worker cannot be asked at another's scrape, so the tallies
# pass every step straight through and the sum of the workers stays exact.
DEFERRED = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_TALLIES: list[CounterTally | HistogramTally] = []


class CounterTally:
    """Steps of a labelled counter, counted per label tuple until ``flush``."""

    __slots__ = ("_children", "_counter", "_counts", "_deferred")

    def __init__(self, counter: Counter, *, deferred: bool | None = None) -> None:
        self._counter = counter
        self._counts: dict[tuple[str, ...], int] = {}
        self._children: dict[tuple[str, ...], object] = {}
        self._deferred = DEFERRED if deferred is None else deferred
        _TALLIES.append(self)

    def inc(self, labels: tuple[str, ...]) -> None:
        if self._deferred:
            counts = self._counts
            counts[labels] = counts.get(labels, 0) + 1
        else:
            self._child(labels).inc()

    def _child(self, labels: tuple[str, ...]):
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._counter.labels(*labels)
        return child

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for labels, steps in counts.items():
            self._child(labels).inc(steps)


class HistogramTally:
    """Observations of a histogram (labelled or not): per label tuple, the count in each
    bucket and the sum, until ``flush``. A value lands in the first bucket whose upper
    bound it does not exceed, as ``Histogram.observe`` places it."""

    __slots__ = ("_bounds", "_children", "_deferred", "_histogram", "_open")

    def __init__(self, histogram: Histogram, bounds: tuple[float, ...], *,
                 deferred: bool | None = None) -> None:
        self._histogram = histogram
        self._bounds = list(bounds)  # +Inf is the bucket past the last bound
        self._open: dict[tuple[str, ...], list[float]] = {}
        self._children: dict[tuple[str, ...], object] = {}
        self._deferred = DEFERRED if deferred is None else deferred
        _TALLIES.append(self)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        if not self._deferred:
            self._child(labels).observe(seconds)
            return
        counts = self._open.get(labels)
        if counts is None:
            counts = self._open[labels] = [0] * (len(self._bounds) + 2)  # buckets, sum
        counts[bisect_left(self._bounds, seconds)] += 1
        counts[-1] += seconds

    def _child(self, labels: tuple[str, ...]):
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = (self._histogram.labels(*labels) if labels
                                              else self._histogram)
        return child

    def flush(self) -> None:
        open_, self._open = self._open, {}
        for labels, counts in open_.items():
            child = self._child(labels)
            # prometheus_client keeps a child's non-cumulative bucket counts and its sum
            # as values with inc(); tests/fast/test_metrics_tally.py pins that.
            for i, steps in enumerate(counts[:-1]):
                if steps:
                    child._buckets[i].inc(steps)
            child._sum.inc(counts[-1])


def flush() -> None:
    """Hand every tally's counts to its Prometheus series (before they are read)."""
    for tally in _TALLIES:
        tally.flush()


def process_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """Add the process_* series (CPU, memory, start time) to a single-process registry."""
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry = GATEWAY) -> tuple[bytes, str]:
    """The metrics text of this process's registry, or of all gateway workers in
    multiprocess mode (only gateway workers write to PROMETHEUS_MULTIPROC_DIR)."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and registry is GATEWAY:
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
