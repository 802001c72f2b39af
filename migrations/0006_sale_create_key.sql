-- Creating a sale is idempotent under an operator's key: the same key and request return
-- the sale already made (finishing its token load if a crash interrupted it); the same key
-- with another request is refused. The fingerprint is the request's canonical JSON.
ALTER TABLE flash_sales ADD COLUMN idempotency_key TEXT;
ALTER TABLE flash_sales ADD COLUMN request_fingerprint TEXT;
CREATE UNIQUE INDEX flash_sales_idempotency_key ON flash_sales (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
