"""Redis admits; Postgres remembers. Stream consumer, batch writer, hold sweeper, audit and
recovery."""
