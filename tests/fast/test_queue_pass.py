"""Queue passes without servers: any text a client sends is refused in the error contract
(never a crash), and a pass opens exactly one user's attempts at one sale until it ends."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import QueueRequired
from engine.waiting_room import PassSigner

SIGNER = PassSigner("fast-tier-secret-0123456789abcdef0123456789")
IDS = st.integers(min_value=1, max_value=10**12)


@given(text=st.text(max_size=200), sale_id=IDS, user_id=IDS)
def test_any_text_is_refused_as_queue_required(text, sale_id, user_id) -> None:
    with pytest.raises(QueueRequired) as refused:
        SIGNER.check(text, sale_id=sale_id, user_id=user_id)
    assert refused.value.status == 403
    assert refused.value.details["reason"] in ("missing", "invalid")


@given(sale_id=IDS, user_id=IDS, other_sale=IDS, other_user=IDS,
       lifetime=st.integers(min_value=1000, max_value=3_600_000))
def test_a_pass_opens_one_user_at_one_sale(sale_id, user_id, other_sale, other_user,
                                           lifetime) -> None:
    expires = int(time.time() * 1000) + lifetime
    queue_pass = SIGNER.sign(sale_id, user_id, expires)
    SIGNER.check(queue_pass, sale_id=sale_id, user_id=user_id)
    for sale, user in ((other_sale, user_id), (sale_id, other_user)):
        if (sale, user) != (sale_id, user_id):
            with pytest.raises(QueueRequired):
                SIGNER.check(queue_pass, sale_id=sale, user_id=user)
    with pytest.raises(QueueRequired):  # the same pass under another secret
        PassSigner("another-secret").check(queue_pass, sale_id=sale_id, user_id=user_id)
    stale = SIGNER.sign(sale_id, user_id, int(time.time() * 1000) - lifetime)
    with pytest.raises(QueueRequired) as refused:
        SIGNER.check(stale, sale_id=sale_id, user_id=user_id)
    assert refused.value.details == {"reason": "expired"}
