-- Discovery: wishlists (with price-drop and back-in-stock notifications through the
-- outbox) and "customers also bought" counts kept incrementally as orders are paid and undone.
--
-- Both are kept by triggers rather than by the Python paths that change prices, stock and
-- order statuses: those paths are many (seller edits, checkout, cancellation, sale closing,
-- returns) and spread over packages, and a trigger writes in the same transaction as the
-- change, so a notification or a count exists exactly when its change committed.

CREATE TABLE wishlist_items (
    user_id        BIGINT NOT NULL REFERENCES users ON DELETE CASCADE,
    product_id     BIGINT NOT NULL REFERENCES products ON DELETE CASCADE,
    price_at_added NUMERIC(12,2) NOT NULL,
    added_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, product_id)
);
CREATE INDEX wishlist_items_newest_idx ON wishlist_items (user_id, added_at DESC, product_id DESC);
CREATE INDEX wishlist_items_product_idx ON wishlist_items (product_id);

-- A wishlisted product became cheaper: one notification per user who wishes for it.
CREATE FUNCTION wishlist_price_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (topic, user_id, payload)
    SELECT 'wishlist.price_drop', w.user_id, jsonb_build_object(
               'product_id', NEW.product_id, 'name', NEW.name,
               'old_price', OLD.price::text, 'price', NEW.price::text,
               'currency', NEW.currency)
    FROM wishlist_items w WHERE w.product_id = NEW.product_id ORDER BY w.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER products_wishlist_price_drop AFTER UPDATE OF price ON products
    FOR EACH ROW WHEN (NEW.price < OLD.price AND NEW.status = 'active')
    EXECUTE FUNCTION wishlist_price_dropped();

-- A wishlisted product is sellable again (available stock went from 0 to more).
CREATE FUNCTION wishlist_back_in_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (topic, user_id, payload)
    SELECT 'wishlist.back_in_stock', w.user_id, jsonb_build_object(
               'product_id', p.product_id, 'name', p.name, 'price', p.price::text,
               'currency', p.currency, 'available_qty', NEW.available_qty)
    FROM wishlist_items w JOIN products p USING (product_id)
    WHERE w.product_id = NEW.product_id AND p.status = 'active' ORDER BY w.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER inventory_wishlist_back_in_stock AFTER UPDATE OF available_qty ON inventory
    FOR EACH ROW WHEN (OLD.available_qty = 0 AND NEW.available_qty > 0)
    EXECUTE FUNCTION wishlist_back_in_stock();

-- Customers also bought: for each ordered pair of distinct products, the number of
-- counted orders holding both (both directions stored, so one product's list is one index
-- range). other_rating copies the other product's rating_avg (kept by a trigger), so the
-- ranking's tie-break is in the index too and a read walks it in its final order, stopping
-- after `limit` available products, however long the product's list of pairs. An order is counted while it is paid, shipped or delivered; copurchase_orders
-- records which orders are counted, so counting is idempotent whatever the sequence of
-- status changes, and cancelling or returning an order takes its pairs back out.
CREATE TABLE copurchases (
    product_id BIGINT NOT NULL,
    other_id   BIGINT NOT NULL,
    -- Never negative (a pair is taken out only by an order that put it in); no CHECK
    -- says so, because a CHECK applies to the proposed row of the upsert below (-1).
    orders       INTEGER NOT NULL,
    other_rating NUMERIC(3,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (product_id, other_id)
);
CREATE INDEX copurchases_rank_idx
    ON copurchases (product_id, orders DESC, other_rating DESC, other_id) WHERE orders > 0;
CREATE INDEX copurchases_other_idx ON copurchases (other_id);

CREATE TABLE copurchase_orders (
    order_id BIGINT PRIMARY KEY
);

CREATE FUNCTION copurchase_count(p_order_id BIGINT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    counts  boolean;
    delta   integer;
BEGIN
    SELECT status IN ('paid', 'shipped', 'delivered') INTO counts
    FROM orders WHERE order_id = p_order_id;
    IF coalesce(counts, false) THEN
        INSERT INTO copurchase_orders VALUES (p_order_id) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN RETURN; END IF;  -- already counted
        delta := 1;
    ELSE
        DELETE FROM copurchase_orders WHERE order_id = p_order_id;
        IF NOT FOUND THEN RETURN; END IF;  -- was not counted
        delta := -1;
    END IF;
    -- Pairs in one fixed order, so concurrent orders lock shared rows in the same order.
    INSERT INTO copurchases AS c (product_id, other_id, orders, other_rating)
    SELECT a.product_id, b.product_id, delta, p.rating_avg
    FROM (SELECT DISTINCT product_id FROM order_items WHERE order_id = p_order_id) a
    JOIN (SELECT DISTINCT product_id FROM order_items WHERE order_id = p_order_id) b
      ON a.product_id <> b.product_id
    JOIN products p ON p.product_id = b.product_id
    ORDER BY 1, 2
    ON CONFLICT (product_id, other_id) DO UPDATE SET orders = c.orders + EXCLUDED.orders;
END $$;

CREATE FUNCTION copurchase_order_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM copurchase_count(NEW.order_id);
    RETURN NULL;
END $$;

-- Deferred to the commit: the order's items are written after its row, in the same
-- transaction, and a status set and reset within one transaction counts once, as it ends.
CREATE CONSTRAINT TRIGGER orders_copurchase AFTER INSERT OR UPDATE OF status ON orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION copurchase_order_changed();

CREATE FUNCTION copurchase_rating_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Rows locked in (product_id, other_id) order, as copurchase_count locks them.
    UPDATE copurchases c SET other_rating = NEW.rating_avg
    FROM (SELECT product_id FROM copurchases WHERE other_id = NEW.product_id
          ORDER BY product_id FOR UPDATE) s
    WHERE c.product_id = s.product_id AND c.other_id = NEW.product_id;
    RETURN NULL;
END $$;
CREATE TRIGGER products_copurchase_rating AFTER UPDATE OF rating_avg ON products
    FOR EACH ROW WHEN (OLD.rating_avg IS DISTINCT FROM NEW.rating_avg)
    EXECUTE FUNCTION copurchase_rating_changed();

-- Recount everything from the orders (after a bulk load with triggers off).
CREATE FUNCTION copurchase_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE copurchases, copurchase_orders;
    INSERT INTO copurchase_orders
    SELECT order_id FROM orders WHERE status IN ('paid', 'shipped', 'delivered');
    INSERT INTO copurchases (product_id, other_id, orders, other_rating)
    SELECT pairs.*, p.rating_avg
    FROM (SELECT a.product_id, b.product_id AS other_id, count(DISTINCT a.order_id)
          FROM copurchase_orders o
          JOIN order_items a ON a.order_id = o.order_id
          JOIN order_items b ON b.order_id = o.order_id AND b.product_id <> a.product_id
          GROUP BY 1, 2) pairs
    JOIN products p ON p.product_id = pairs.other_id;
END $$;

-- Search on very common words. A cold search for a word that ~70k of 1M products hold
-- spent its time fetching those rows at random from the wide products heap, then scoring
-- and counting every one. For the most frequent lexemes (search_hot_terms):
--
-- * search_hot_hits keeps, per lexeme, what a search reads of each active product holding
--   it: the filter, facet and sort columns and `static`, the part of the relevance score
--   that does not move with time: the lexeme's text rank (ts_rank against a one-lexeme
--   query depends on the document only) x the rating factor;
-- * search_hot_cells counts those rows per (lexeme, brand, category, price bucket, star
--   floor), with the price and rating range of each cell, so facet counts and totals are
--   sums over a few thousand cells whenever every cell lies wholly inside or outside the
--   price and rating filters (the ranges only widen between rebuilds, which is safe: a
--   cell that straddles a filter sends the search back to the rows).
--
-- Both follow product writes through a trigger in the same transaction (catalog/hot_terms.py
-- reads them). The relevance score must stay the one catalog/search.py computes: static
-- is ts_rank * (1 + 0.04 * rating_sum / (rating_count + 10)), in float8, in that order.
CREATE FUNCTION search_price_bucket(price NUMERIC) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(price, '{25,50,100,250,500,1000,2500}'::numeric[])  -- search.PRICE_EDGES
$$;

-- The calendar month (UTC) of a time: rows of one month share an upper bound on their
-- recency factor, which the ranking uses (catalog/hot_terms.py).
CREATE FUNCTION search_month(at TIMESTAMPTZ) RETURNS DATE
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_trunc('month', at AT TIME ZONE 'UTC')::date
$$;

CREATE TABLE search_hot_terms (
    lexeme   TEXT PRIMARY KEY,
    query    tsquery NOT NULL,   -- the one-lexeme query, as websearch_to_tsquery makes it
    products INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE search_hot_hits (
    lexeme       TEXT NOT NULL REFERENCES search_hot_terms ON DELETE CASCADE,
    product_id   BIGINT NOT NULL REFERENCES products ON DELETE CASCADE,
    static       FLOAT8 NOT NULL,
    brand        TEXT NOT NULL,
    category_id  BIGINT,
    price        NUMERIC(12,2) NOT NULL,
    rating_avg   NUMERIC(3,2) NOT NULL,
    rating_count INTEGER NOT NULL,
    rating_sum   BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    month        DATE NOT NULL,
    bucket       SMALLINT NOT NULL,
    stars        SMALLINT NOT NULL
);
-- One index serves both the whole range of a lexeme and, month by month, its rows by
-- falling static score.
CREATE INDEX search_hot_hits_rank_idx ON search_hot_hits (lexeme, month, static DESC);
CREATE INDEX search_hot_hits_product_idx ON search_hot_hits (product_id);

CREATE TABLE search_hot_cells (
    lexeme      TEXT NOT NULL REFERENCES search_hot_terms ON DELETE CASCADE,
    brand       TEXT NOT NULL,
    category_id BIGINT,
    bucket      SMALLINT NOT NULL,
    stars       SMALLINT NOT NULL,
    products    INTEGER NOT NULL,
    min_price   NUMERIC(12,2),
    max_price   NUMERIC(12,2),
    min_rating  NUMERIC(3,2),
    max_rating  NUMERIC(3,2),
    UNIQUE NULLS NOT DISTINCT (lexeme, brand, category_id, bucket, stars)
);

CREATE FUNCTION search_hot_hits_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Cells are upserted in key order, so concurrent product writes lock them in one order.
    IF TG_OP = 'UPDATE' THEN
        WITH gone AS (DELETE FROM search_hot_hits WHERE product_id = OLD.product_id
                      RETURNING lexeme, brand, category_id, bucket, stars)
        INSERT INTO search_hot_cells AS c (lexeme, brand, category_id, bucket, stars, products)
        SELECT lexeme, brand, category_id, bucket, stars, -count(*) FROM gone
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (lexeme, brand, category_id, bucket, stars)
        DO UPDATE SET products = c.products + EXCLUDED.products;
    END IF;
    IF NEW.status = 'active' THEN
        WITH added AS (
            INSERT INTO search_hot_hits
            SELECT t.lexeme, NEW.product_id,
                   ts_rank(NEW.search_vector, t.query)
                   * (1 + 0.04 * NEW.rating_sum::float8 / (NEW.rating_count + 10)),
                   NEW.brand, NEW.category_id, NEW.price, NEW.rating_avg, NEW.rating_count,
                   NEW.rating_sum, NEW.created_at, search_month(NEW.created_at),
                   search_price_bucket(NEW.price), floor(NEW.rating_avg)
            FROM search_hot_terms t WHERE NEW.search_vector @@ t.query
            RETURNING lexeme, brand, category_id, bucket, stars, price, rating_avg)
        INSERT INTO search_hot_cells AS c
        SELECT lexeme, brand, category_id, bucket, stars, count(*), min(price), max(price),
               min(rating_avg), max(rating_avg)
        FROM added GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (lexeme, brand, category_id, bucket, stars) DO UPDATE SET
            products = c.products + EXCLUDED.products,
            min_price = least(c.min_price, EXCLUDED.min_price),
            max_price = greatest(c.max_price, EXCLUDED.max_price),
            min_rating = least(c.min_rating, EXCLUDED.min_rating),
            max_rating = greatest(c.max_rating, EXCLUDED.max_rating);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER products_search_hot_hits AFTER INSERT ON products
    FOR EACH ROW EXECUTE FUNCTION search_hot_hits_sync();
CREATE TRIGGER products_search_hot_hits_update AFTER UPDATE ON products
    FOR EACH ROW WHEN (
        (OLD.search_vector, OLD.status, OLD.brand, OLD.category_id, OLD.price, OLD.rating_avg,
         OLD.rating_count, OLD.rating_sum, OLD.created_at)
        IS DISTINCT FROM
        (NEW.search_vector, NEW.status, NEW.brand, NEW.category_id, NEW.price, NEW.rating_avg,
         NEW.rating_count, NEW.rating_sum, NEW.created_at))
    EXECUTE FUNCTION search_hot_hits_sync();

-- Choose the lexemes of the words (search_terms) used by at least min_products active
-- products and fill their rows, one lexeme at a time so each lexeme's rows lie together,
-- then count the cells exactly. Run after a bulk load (the seed does) or to follow a
-- catalog whose common words moved.
CREATE FUNCTION search_hot_terms_rebuild(min_products INTEGER) RETURNS INTEGER
LANGUAGE plpgsql SET client_min_messages = warning AS $$
DECLARE
    hot record;
BEGIN
    TRUNCATE search_hot_cells, search_hot_hits, search_hot_terms;
    INSERT INTO search_hot_terms (lexeme, query)
    SELECT DISTINCT ON (querytree(q)) trim(both '''' FROM querytree(q)), q
    FROM (SELECT websearch_to_tsquery('english', term) AS q FROM search_terms
          WHERE product_count >= min_products) s
    WHERE numnode(q) = 1
    ORDER BY querytree(q);
    FOR hot IN SELECT lexeme, query FROM search_hot_terms ORDER BY lexeme LOOP
        INSERT INTO search_hot_hits
        SELECT hot.lexeme, p.product_id,
               ts_rank(p.search_vector, hot.query)
               * (1 + 0.04 * p.rating_sum::float8 / (p.rating_count + 10)),
               p.brand, p.category_id, p.price, p.rating_avg, p.rating_count, p.rating_sum,
               p.created_at, search_month(p.created_at), search_price_bucket(p.price),
               floor(p.rating_avg)
        FROM products p WHERE p.search_vector @@ hot.query AND p.status = 'active'
        ORDER BY p.product_id;
    END LOOP;
    INSERT INTO search_hot_cells
    SELECT lexeme, brand, category_id, bucket, stars, count(*), min(price), max(price),
           min(rating_avg), max(rating_avg)
    FROM search_hot_hits GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5;  -- a lexeme's cells lie together
    UPDATE search_hot_terms h SET products = c.n
    FROM (SELECT s.lexeme AS term, count(*) AS n FROM search_hot_hits s GROUP BY 1) c
    WHERE c.term = h.lexeme;
    RETURN (SELECT count(*) FROM search_hot_terms);
END $$;
