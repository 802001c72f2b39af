"""The fast tier: no Redis or Postgres server needed (pure functions, fakeredis)."""

import pytest


@pytest.fixture(autouse=True)
def clean() -> None:
    """Nothing to clean: this tier uses no real services."""
