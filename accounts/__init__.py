"""Users, password hashing, bearer tokens, addresses and payment methods."""
