-- Where the reconciler stands in each bucket's stream of a sale split into buckets
-- (engine/buckets.py): bucket b >= 1 -> the last stream id applied ('0-0' when absent);
-- bucket 0's stays in last_stream_id. With every bucket's point, the books check compares
-- Postgres with Redis for a bucketed sale too (reconciler/board.py).
ALTER TABLE flash_sales ADD COLUMN bucket_stream_ids JSONB NOT NULL DEFAULT '{}';
