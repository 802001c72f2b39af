"""The same state machine on fakeredis (with Lua): a fast tier that runs in seconds and
needs no server. The proof stays tests/test_invariant.py, against real Redis."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import settings

from tests.test_invariant import SaleMachine


class FakeSaleMachine(SaleMachine):
    def connect(self):
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


pytestmark = pytest.mark.fast
TestFakeSaleInvariant = FakeSaleMachine.TestCase
TestFakeSaleInvariant.settings = settings(max_examples=30, stateful_step_count=25,
                                          deadline=None)
