-- Foundation: accounts, catalog core, inventory, flash sales, orders.
-- Money is NUMERIC(12,2); times are timestamptz.

CREATE TABLE users (
    user_id        BIGSERIAL PRIMARY KEY,
    email          TEXT NOT NULL,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'customer'
                   CHECK (role IN ('customer', 'seller', 'admin')),
    wallet_balance NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (wallet_balance >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE addresses (
    address_id  BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users ON DELETE CASCADE,
    line1       TEXT NOT NULL,
    line2       TEXT,
    city        TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX addresses_user_idx ON addresses (user_id);

-- A card is kept as brand, last4, expiry and the provider's opaque token: never the
-- number or the CVC.
CREATE TABLE payment_methods (
    payment_method_id BIGSERIAL PRIMARY KEY,
    user_id           BIGINT NOT NULL REFERENCES users ON DELETE CASCADE,
    type              TEXT NOT NULL CHECK (type IN ('card', 'wallet', 'cod')),
    brand             TEXT,
    last4             TEXT CHECK (last4 IS NULL OR last4 ~ '^[0-9]{4}$'),
    exp_month         SMALLINT,
    exp_year          SMALLINT,
    provider_token    TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_user_idx ON payment_methods (user_id);

CREATE TABLE categories (
    category_id BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    parent_id   BIGINT REFERENCES categories,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX categories_name_key ON categories (coalesce(parent_id, 0), lower(name));

CREATE TABLE products (
    product_id   BIGSERIAL PRIMARY KEY,
    seller_id    BIGINT REFERENCES users,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    brand        TEXT NOT NULL DEFAULT '',
    category_id  BIGINT REFERENCES categories,
    price        NUMERIC(12,2) NOT NULL CHECK (price >= 0),
    currency     TEXT NOT NULL DEFAULT 'USD',
    rating_avg   NUMERIC(3,2) NOT NULL DEFAULT 0,
    rating_count INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'archived')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX products_seller_idx ON products (seller_id);
CREATE INDEX products_category_idx ON products (category_id);

-- available_qty: sellable now; reserved_qty: held by live flash-sale holds;
-- sold_qty: units sold (flash and regular). Units moved into a flash sale leave
-- available_qty and live in flash_sales until sold or returned.
CREATE TABLE inventory (
    product_id    BIGINT PRIMARY KEY REFERENCES products ON DELETE CASCADE,
    available_qty INTEGER NOT NULL DEFAULT 0 CHECK (available_qty >= 0),
    reserved_qty  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_qty >= 0),
    sold_qty      INTEGER NOT NULL DEFAULT 0 CHECK (sold_qty >= 0),
    version       INTEGER NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- status: loading (units taken from inventory, tokens not yet in Redis) -> ready -> closed
-- (leftover units returned to inventory). The public status (scheduled, active, sold_out,
-- ended) is derived from the window and the tokens left.
CREATE TABLE flash_sales (
    sale_id        BIGSERIAL PRIMARY KEY,
    product_id     BIGINT NOT NULL REFERENCES products,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    price          NUMERIC(12,2) NOT NULL CHECK (price >= 0),
    starts_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    ends_at        TIMESTAMPTZ,
    per_user_limit INTEGER NOT NULL DEFAULT 1 CHECK (per_user_limit > 0),
    hold_seconds   INTEGER NOT NULL DEFAULT 600 CHECK (hold_seconds > 0),
    status         TEXT NOT NULL DEFAULT 'loading' CHECK (status IN ('loading', 'ready', 'closed')),
    -- Kept by the reconciler from the sale's event stream.
    held_qty       INTEGER NOT NULL DEFAULT 0,
    confirmed_qty  INTEGER NOT NULL DEFAULT 0,
    released_qty   INTEGER NOT NULL DEFAULT 0,
    expired_qty    INTEGER NOT NULL DEFAULT 0,
    last_stream_id TEXT NOT NULL DEFAULT '0-0',
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX flash_sales_product_idx ON flash_sales (product_id);

CREATE TABLE sale_reservations (
    reservation_id  TEXT PRIMARY KEY,
    sale_id         BIGINT NOT NULL REFERENCES flash_sales,
    user_id         BIGINT NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    status          TEXT NOT NULL CHECK (status IN ('held', 'confirmed', 'released', 'expired')),
    order_id        BIGINT,
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sale_reservations_sale_idx ON sale_reservations (sale_id, status);
CREATE INDEX sale_reservations_user_idx ON sale_reservations (user_id);

CREATE TABLE orders (
    order_id            BIGSERIAL PRIMARY KEY,
    user_id             BIGINT NOT NULL REFERENCES users,
    idempotency_key     TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                        ('placed', 'paid', 'shipped', 'delivered', 'cancelled', 'returned')),
    subtotal            NUMERIC(12,2) NOT NULL,
    discount            NUMERIC(12,2) NOT NULL DEFAULT 0,
    tax                 NUMERIC(12,2) NOT NULL DEFAULT 0,
    shipping_fee        NUMERIC(12,2) NOT NULL DEFAULT 0,
    total               NUMERIC(12,2) NOT NULL CHECK (total >= 0),
    currency            TEXT NOT NULL DEFAULT 'USD',
    shipping_address_id BIGINT REFERENCES addresses,
    payment_method_id   BIGINT REFERENCES payment_methods,
    coupon_code         TEXT,
    reservation_id      TEXT,  -- no FK: the reconciler may write the hold row later
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Idempotency keys are scoped to the user (Stripe's semantics).
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC);

CREATE TABLE order_items (
    order_item_id BIGSERIAL PRIMARY KEY,
    order_id      BIGINT NOT NULL REFERENCES orders ON DELETE CASCADE,
    product_id    BIGINT NOT NULL REFERENCES products,
    sale_id       BIGINT REFERENCES flash_sales,
    quantity      INTEGER NOT NULL CHECK (quantity > 0),
    unit_price    NUMERIC(12,2) NOT NULL,
    subtotal      NUMERIC(12,2) NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id);
