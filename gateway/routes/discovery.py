"""Discovery endpoints: the shopper's wishlist and "customers also bought"."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from catalog.also_bought import AlsoBought
from catalog.wishlist import Wishlist, WishlistItem
from gateway.api import Reply, RouteTable, path_int, principal
from gateway.context import services

routes = RouteTable("discovery")


class AlsoBoughtQuery(msgspec.Struct):
    limit: Annotated[int, Meta(ge=1, le=50)] = 10


@routes.get("/api/v1/me/wishlist", auth="owner", response=Wishlist)
async def wishlist(request: web.Request) -> Wishlist:
    """Your wishlist, newest first, with each product's current price and stock."""
    return await services(request).wishlists.items(principal(request).user_id)


@routes.put("/api/v1/me/wishlist/{product_id}", auth="owner", response=WishlistItem,
            status=201, also=(200,), errors=(422,))
async def add_to_wishlist(request: web.Request) -> WishlistItem | Reply:
    """Add a product to your wishlist: 201 when added, 200 when it was already there."""
    item, added = await services(request).wishlists.add(
        principal(request).user_id, path_int(request, "product_id"))
    return item if added else Reply(item, 200)


@routes.delete("/api/v1/me/wishlist/{product_id}", auth="owner", response=Wishlist)
async def remove_from_wishlist(request: web.Request) -> Wishlist:
    """Take a product off your wishlist; answers with the wishlist that remains."""
    user_id = principal(request).user_id
    await services(request).wishlists.remove(user_id, path_int(request, "product_id"))
    return await services(request).wishlists.items(user_id)


@routes.get("/api/v1/products/{product_id}/also-bought", auth="public", query=AlsoBoughtQuery,
            response=AlsoBought)
async def also_bought(request: web.Request, query: AlsoBoughtQuery) -> AlsoBought:
    """Products most often in the same paid orders as this one (ties by rating, then id);
    a product without co-purchases gets its category's top-rated products, marked
    ``fallback``."""
    return await services(request).also_bought.for_product(
        path_int(request, "product_id"), limit=query.limit)
