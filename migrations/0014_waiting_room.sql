-- A flash sale may have a stock-aware waiting room (engine/waiting_room.py). Its settings
-- live here so that loading the tokens (and `flashsale sale recover`) configures the room
-- in Redis before any unit can be reserved. NULL room_* columns: no room.
ALTER TABLE flash_sales
    ADD COLUMN room_rate INTEGER CHECK (room_rate > 0),
    ADD COLUMN room_pass_seconds INTEGER CHECK (room_pass_seconds > 0),
    ADD COLUMN room_margin_percent INTEGER CHECK (room_margin_percent >= 0),
    -- false: a rate-only room (no stock awareness), kept for comparisons
    ADD COLUMN room_stock_aware BOOLEAN,
    ADD CONSTRAINT flash_sales_room_all_or_none CHECK (
        (room_rate IS NULL) = (room_pass_seconds IS NULL)
        AND (room_rate IS NULL) = (room_margin_percent IS NULL)
        AND (room_rate IS NULL) = (room_stock_aware IS NULL));
