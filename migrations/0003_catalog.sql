-- Catalog: full-text search, facets, keyset browsing, autocomplete, reviews, seller figures.
-- Every browse index is partial on status = 'active' (what shoppers see) and spells the
-- exact ORDER BY of one sort, so a page is an index range scan and deep pages use a keyset.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- rating_sum keeps rating_avg exact: the average is recomputed from integer totals on
-- every review, never adjusted incrementally (no drift).
ALTER TABLE products ADD COLUMN rating_sum BIGINT NOT NULL DEFAULT 0 CHECK (rating_sum >= 0);

-- Weighted document: name (A) above brand (B) above description (C). Stored, so ranking
-- reads it instead of re-parsing text for every hit.
ALTER TABLE products ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, name), 'A') ||
    setweight(to_tsvector('english'::regconfig, brand), 'B') ||
    setweight(to_tsvector('english'::regconfig, description), 'C')) STORED;

CREATE INDEX products_search_idx ON products USING gin (search_vector);

-- Browse without a category, one index per sort.
CREATE INDEX products_price_idx ON products (price, product_id) WHERE status = 'active';
CREATE INDEX products_rating_idx ON products (rating_avg, rating_count, product_id)
    WHERE status = 'active';
CREATE INDEX products_newest_idx ON products (created_at, product_id) WHERE status = 'active';
-- Browse inside one category (a parent category is a merge of its leaves' scans).
CREATE INDEX products_category_price_idx ON products (category_id, price, product_id)
    WHERE status = 'active';
CREATE INDEX products_category_rating_idx
    ON products (category_id, rating_avg, rating_count, product_id) WHERE status = 'active';
CREATE INDEX products_category_newest_idx ON products (category_id, created_at, product_id)
    WHERE status = 'active';
CREATE INDEX products_brand_idx ON products (brand) WHERE status = 'active';

-- Autocomplete vocabulary: each lower-cased word of active products' names and brands with
-- the number of active products using it, kept in the same transaction as product writes.
CREATE TABLE search_terms (
    term          TEXT PRIMARY KEY,
    product_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX search_terms_prefix_idx ON search_terms (term text_pattern_ops, product_count);
CREATE INDEX search_terms_trgm_idx ON search_terms USING gin (term gin_trgm_ops);

CREATE TABLE reviews (
    review_id  BIGSERIAL PRIMARY KEY,
    product_id BIGINT NOT NULL REFERENCES products ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users ON DELETE CASCADE,
    rating     SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title      TEXT NOT NULL DEFAULT '',
    body       TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (product_id, user_id)
);
CREATE INDEX reviews_product_newest_idx ON reviews (product_id, created_at DESC, review_id DESC);
CREATE INDEX reviews_user_idx ON reviews (user_id);

-- Seller dashboard: units sold and revenue per product.
CREATE INDEX order_items_product_idx ON order_items (product_id);
