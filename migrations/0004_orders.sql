-- The purchase path: checkout sagas (also the idempotency records), payments, the wallet
-- ledger, the simulated card provider's books, tracking events, coupons, returns, the
-- notification outbox and post-commit order tasks. Money is NUMERIC(12,2).

-- One row per (user, idempotency key): the idempotency record and the saga's durable
-- progress at once. step: started -> reserved -> ordered -> done, or -> compensating ->
-- done. A running row is owned by whoever holds its lease; an expired lease means its
-- executor died and the saga may be resumed (by the client's retry or by recovery).
CREATE TABLE checkouts (
    checkout_id     BIGSERIAL PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES users,
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,          -- sha256 of the canonical request body
    request         JSONB NOT NULL,         -- the body: ids and codes, nothing secret
    kind            TEXT NOT NULL CHECK (kind IN ('cart', 'flash')),
    state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'completed', 'failed')),
    step            TEXT NOT NULL DEFAULT 'started'
                    CHECK (step IN ('started', 'reserved', 'ordered', 'compensating', 'done')),
    lease_token     UUID,
    lease_until     TIMESTAMPTZ,
    executions      INTEGER NOT NULL DEFAULT 1,  -- > 1: resumed after a crash or a 503
    order_id        BIGINT,                     -- allocated at the reserve step
    payment_id      BIGINT,
    plan            JSONB,                      -- priced lines and amounts, fixed when reserved
    response_status SMALLINT,
    response_body   TEXT,                       -- the exact JSON answered, replayed verbatim
    cart_pending    BOOLEAN NOT NULL DEFAULT false,  -- ordered units still to take out of the cart
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    UNIQUE (user_id, idempotency_key),
    CHECK ((state = 'running') = (step <> 'done'))
);
CREATE INDEX checkouts_running_idx ON checkouts (lease_until) WHERE state = 'running';
CREATE INDEX checkouts_cart_pending_idx ON checkouts (finished_at) WHERE cart_pending;

CREATE TABLE payments (
    payment_id        BIGSERIAL PRIMARY KEY,
    checkout_id       BIGINT NOT NULL REFERENCES checkouts,
    order_id          BIGINT,  -- allocated before the order row exists: no FK
    user_id           BIGINT NOT NULL REFERENCES users,
    payment_method_id BIGINT REFERENCES payment_methods,
    method            TEXT NOT NULL CHECK (method IN ('card', 'wallet', 'cod')),
    amount            NUMERIC(12,2) NOT NULL CHECK (amount >= 0),
    refunded_amount   NUMERIC(12,2) NOT NULL DEFAULT 0
                      CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    status            TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                      ('pending', 'authorized', 'captured', 'declined', 'voided', 'refunded')),
    decline_reason    TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX payments_checkout_key ON payments (checkout_id);
CREATE INDEX payments_order_idx ON payments (order_id);

-- Refunds are keyed by a reference (cancel:<order>, return:<return>, reversal:<payment>)
-- so that repeating one never pays twice.
CREATE TABLE payment_refunds (
    refund_id    BIGSERIAL PRIMARY KEY,
    payment_id   BIGINT NOT NULL REFERENCES payments,
    reference    TEXT NOT NULL UNIQUE,
    amount       NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    reason       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every wallet movement made by a payment, keyed by its reference (auth:, capture:,
-- void:, refund:) so each happens once.
CREATE TABLE wallet_ledger (
    entry_id      BIGSERIAL PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users,
    reference     TEXT NOT NULL UNIQUE,
    amount        NUMERIC(12,2) NOT NULL,  -- negative: debit
    balance_after NUMERIC(12,2) NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX wallet_ledger_user_idx ON wallet_ledger (user_id, entry_id);

-- The simulated card provider's own books (a real provider keeps these on its side).
CREATE TABLE sim_card_charges (
    reference       TEXT PRIMARY KEY,
    amount          NUMERIC(12,2) NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('authorized', 'captured', 'voided')),
    refunded_amount NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (refunded_amount <= amount),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE sim_card_refunds (
    refund_reference TEXT PRIMARY KEY,
    reference        TEXT NOT NULL REFERENCES sim_card_charges,
    amount           NUMERIC(12,2) NOT NULL CHECK (amount > 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tracking: one row per status an order reached.
CREATE TABLE order_events (
    event_id  BIGSERIAL PRIMARY KEY,
    order_id  BIGINT NOT NULL REFERENCES orders ON DELETE CASCADE,
    status    TEXT NOT NULL,
    note      TEXT,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order_idx ON order_events (order_id, event_id);
CREATE INDEX orders_user_status_idx ON orders (user_id, status, created_at DESC);

CREATE TABLE coupons (
    coupon_id       BIGSERIAL PRIMARY KEY,
    code            TEXT NOT NULL,
    percent_off     NUMERIC(5,2) CHECK (percent_off > 0 AND percent_off <= 100),
    amount_off      NUMERIC(12,2) CHECK (amount_off > 0),
    min_subtotal    NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (min_subtotal >= 0),
    max_redemptions INTEGER CHECK (max_redemptions > 0),
    per_user_limit  INTEGER CHECK (per_user_limit > 0),
    expires_at      TIMESTAMPTZ,
    redeemed        INTEGER NOT NULL DEFAULT 0
                    CHECK (redeemed >= 0 AND (max_redemptions IS NULL OR redeemed <= max_redemptions)),
    active          BOOLEAN NOT NULL DEFAULT true,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL))
);
CREATE UNIQUE INDEX coupons_code_key ON coupons (upper(code));

-- Per-user use counts: the row lock of an upsert makes the per-user limit exact.
CREATE TABLE coupon_usage (
    coupon_id BIGINT NOT NULL REFERENCES coupons,
    user_id   BIGINT NOT NULL REFERENCES users,
    uses      INTEGER NOT NULL CHECK (uses >= 0),
    PRIMARY KEY (coupon_id, user_id)
);

-- One redemption per checkout; released when the checkout fails or the order is cancelled.
CREATE TABLE coupon_redemptions (
    checkout_id BIGINT PRIMARY KEY REFERENCES checkouts,
    coupon_id   BIGINT NOT NULL REFERENCES coupons,
    user_id     BIGINT NOT NULL REFERENCES users,
    order_id    BIGINT,
    discount    NUMERIC(12,2) NOT NULL,
    status      TEXT NOT NULL DEFAULT 'redeemed' CHECK (status IN ('redeemed', 'released')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at TIMESTAMPTZ
);
CREATE INDEX coupon_redemptions_coupon_idx ON coupon_redemptions (coupon_id, status);

CREATE TABLE returns (
    return_id     BIGSERIAL PRIMARY KEY,
    order_id      BIGINT NOT NULL REFERENCES orders,
    user_id       BIGINT NOT NULL REFERENCES users,
    status        TEXT NOT NULL DEFAULT 'requested'
                  CHECK (status IN ('requested', 'refunded', 'rejected')),
    reason        TEXT NOT NULL,
    refund_amount NUMERIC(12,2) NOT NULL CHECK (refund_amount >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at    TIMESTAMPTZ
);
CREATE INDEX returns_order_idx ON returns (order_id);

CREATE TABLE return_items (
    return_id     BIGINT NOT NULL REFERENCES returns ON DELETE CASCADE,
    order_item_id BIGINT NOT NULL REFERENCES order_items,
    quantity      INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (return_id, order_item_id)
);

-- Transactional outbox: written in the transaction of the order change it announces,
-- delivered at least once by `flashsale notify`.
CREATE TABLE outbox (
    event_id        BIGSERIAL PRIMARY KEY,
    topic           TEXT NOT NULL,
    order_id        BIGINT,
    user_id         BIGINT,
    payload         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until    TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at, event_id) WHERE delivered_at IS NULL;

-- Side effects that an order change commits to but cannot make in its own transaction
-- (refund at the provider, a flash unit back on sale in Redis, units back into stock once
-- the reconciler has counted them sold): recorded with the change, done after the
-- commit, retried until done.
CREATE TABLE order_tasks (
    task_id         BIGSERIAL PRIMARY KEY,
    order_id        BIGINT NOT NULL REFERENCES orders,
    kind            TEXT NOT NULL CHECK (kind IN ('refund', 'release_unit', 'restock')),
    payload         JSONB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until    TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at         TIMESTAMPTZ
);
CREATE INDEX order_tasks_pending_idx ON order_tasks (next_attempt_at) WHERE state = 'pending';
