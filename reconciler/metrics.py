"""The reconciler's Prometheus metrics, in the reconciler's own registry (the gateway
never imports this module, so it exports none of these)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.metrics import SHARED, process_registry

RECONCILER = process_registry(CollectorRegistry())
for _collector in SHARED:
    RECONCILER.register(_collector)

EVENTS_APPLIED = Counter(
    "flashsale_reconciler_events_applied", "Sale events applied to Postgres", ["type"],
    registry=RECONCILER)
BATCH_SIZE = Histogram(
    "flashsale_reconciler_batch_size", "Events per Postgres transaction",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000), registry=RECONCILER)
PENDING_ENTRIES = Gauge(
    "flashsale_reconciler_pending_entries", "Stream entries not yet applied", ["sale_id"],
    registry=RECONCILER)
OLDEST_PENDING_AGE = Gauge(
    "flashsale_reconciler_oldest_pending_age_seconds",
    "Age of the oldest event not yet applied to Postgres", registry=RECONCILER)
POSTGRES_ERRORS = Counter(
    "flashsale_reconciler_postgres_errors", "Failed batch writes to Postgres",
    registry=RECONCILER)
REDIS_ERRORS = Counter(
    "flashsale_reconciler_redis_errors", "Failed reads or acks against Redis",
    registry=RECONCILER)
CLAIMED = Counter(
    "flashsale_reconciler_claimed", "Pending entries claimed from dead consumers",
    registry=RECONCILER)
CONFLICTS = Counter(
    "flashsale_reconciler_conflicts",
    "Events naming a known reservation id with another owner (recorded, not merged)",
    registry=RECONCILER)
DEAD_LETTERS = Counter(
    "flashsale_reconciler_dead_letters",
    "Stream entries Postgres refused for good or that could not be read, parked",
    registry=RECONCILER)
HOLDS_EXPIRED = Counter(
    "flashsale_reconciler_holds_expired", "Holds returned to stock by the sweeper",
    registry=RECONCILER)
LAST_SWEEP = Gauge(
    "flashsale_reconciler_last_sweep_timestamp_seconds",
    "When the sweeper last finished a pass over the active sales", registry=RECONCILER)

# -- per live sale, published by the sweeper and removed when the sale closes ------------
TOKENS_REMAINING = Gauge(
    "flashsale_sale_tokens_remaining", "Tokens left in Redis per sale", ["sale_id"],
    registry=RECONCILER)
HOLDS_LIVE = Gauge(
    "flashsale_sale_holds_live", "Unpaid holds per sale", ["sale_id"], registry=RECONCILER)
BOOKS_MISMATCH = Gauge(
    "flashsale_sale_books_mismatch_units",
    "Units by which a sale's books fail to balance (initial = tokens + held + confirmed in "
    "Redis, no unit sold twice, Postgres agrees at the same stream point); 0 when they do",
    ["sale_id"], registry=RECONCILER)
PER_SALE = (TOKENS_REMAINING, HOLDS_LIVE, PENDING_ENTRIES, BOOKS_MISMATCH)

# -- backlogs ----------------------------------------------------------------------------
OUTBOX_BACKLOG = Gauge(
    "flashsale_outbox_backlog", "Order notifications written but not yet delivered",
    registry=RECONCILER)
OUTBOX_OLDEST_AGE = Gauge(
    "flashsale_outbox_oldest_age_seconds",
    "Age of the oldest undelivered order notification (0 when none)", registry=RECONCILER)
DEAD_LETTERS_PARKED = Gauge(
    "flashsale_dead_letters_parked",
    "Sale events Postgres refused for good, parked in sale_dead_letters, not yet resolved "
    "by an operator (flashsale sale parked)",
    registry=RECONCILER)
