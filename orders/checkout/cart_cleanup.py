"""After the order: the ordered units leave the shopper's cart, once per checkout.

The order stands whether or not Redis answers, so a cart that cannot be emptied at once
is marked ``cart_pending`` on the checkout and emptied by recovery later. Units the
shopper added while the checkout ran stay in the cart (``Carts.remove_ordered``).
"""

from __future__ import annotations

import logging

from orders.checkout.state import Saga, Services, transient

log = logging.getLogger("flashsale.checkout")


async def empty_cart(svc: Services, saga: Saga) -> bool:
    """Take the ordered units out of the cart (at most once per checkout); True when
    Redis could not be reached and recovery must do it later."""
    checkout_id = saga.record.checkout_id
    try:
        await svc.carts.remove_ordered(saga.record.user_id, saga.plan.units(),
                                       checkout_id=checkout_id)
    except Exception as exc:  # the order stands either way
        if not transient(exc):
            raise
        log.warning("checkout %s: cart not emptied yet: %s", checkout_id, exc)
        return True
    return False


async def after_order_placed(svc: Services, saga: Saga) -> None:
    """Cash on delivery: the ordered units leave the cart after the order is placed
    (the checkout ended with ``cart_pending`` set)."""
    if saga.from_cart and not await empty_cart(svc, saga):
        await svc.store.cart_done(svc.pool, saga.record.checkout_id)


async def clear_pending(svc: Services, limit: int) -> int:
    """Empty the carts that an outage left full when their checkouts ended."""
    records = await svc.store.carts_pending(svc.pool, limit)
    for record in records:
        if not await empty_cart(svc, Saga.resume(record)):
            await svc.store.cart_done(svc.pool, record.checkout_id)
    return len(records)
