-- Sale lifecycle: an operator can pause a sale (no new reservations; holds can still be
-- paid) and resume it. Redis keeps the live state (meta "state" = paused); Postgres keeps
-- it too so `flashsale sale recover` rebuilds a paused sale paused. Ending a sale early
-- moves ends_at to now; the sweeper then closes it as it closes any finished sale.
ALTER TABLE flash_sales ADD COLUMN paused_at TIMESTAMPTZ;
CREATE INDEX flash_sales_created_idx ON flash_sales (created_at DESC, sale_id DESC);
