-- Hot-product buckets (engine/buckets.py): a sale's tokens split over this many Redis
-- buckets, each in its own Redis Cluster slot. 1 is a sale as it always was. Fixed for the
-- sale's life: buyers are routed to bucket user_id mod buckets, and reservation ids name
-- their bucket (engine/keys.py).
ALTER TABLE flash_sales
    ADD COLUMN buckets SMALLINT NOT NULL DEFAULT 1
        CONSTRAINT flash_sales_buckets_range CHECK (buckets BETWEEN 1 AND 64);

-- Each bucket has its own event stream on its own master, and two masters can give two
-- entries the same stream id: what the reconciler sets aside is keyed by the bucket too.
ALTER TABLE sale_event_conflicts ADD COLUMN bucket SMALLINT NOT NULL DEFAULT 0,
    DROP CONSTRAINT sale_event_conflicts_sale_id_stream_id_key,
    ADD CONSTRAINT sale_event_conflicts_entry_key UNIQUE (sale_id, bucket, stream_id);
ALTER TABLE sale_dead_letters ADD COLUMN bucket SMALLINT NOT NULL DEFAULT 0,
    DROP CONSTRAINT sale_dead_letters_sale_id_stream_id_key,
    ADD CONSTRAINT sale_dead_letters_entry_key UNIQUE (sale_id, bucket, stream_id);
