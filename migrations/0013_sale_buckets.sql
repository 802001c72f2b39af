-- Hot-product buckets (engine/buckets.py): a sale's tokens split over this many Redis
-- buckets, each in its own Redis Cluster slot. 1 is a sale as it always was. Fixed for the
-- sale's life: buyers are routed to bucket user_id mod buckets, and reservation ids name
-- their bucket (engine/keys.py).
ALTER TABLE flash_sales
    ADD COLUMN buckets SMALLINT NOT NULL DEFAULT 1
        CONSTRAINT flash_sales_buckets_range CHECK (buckets BETWEEN 1 AND 64);
