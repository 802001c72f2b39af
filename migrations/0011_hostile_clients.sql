-- One cart, one checkout at a time: a user has at most one cart checkout that is still
-- running or whose ordered units have not left the cart yet. A second, concurrent
-- checkout of the same cart (any idempotency key, any gateway process) fails on this
-- index and is answered 409; once the first has ended, the cart is empty (422).
CREATE UNIQUE INDEX checkouts_one_cart_key ON checkouts (user_id)
    WHERE kind = 'cart' AND (state = 'running' OR cart_pending);

-- Tokens carry the version they were issued under; bumping it (role change, password
-- change, "log out everywhere") revokes every token issued before.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
