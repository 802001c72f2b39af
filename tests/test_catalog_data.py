"""A small, fully known catalog for the catalog tests, and the reference answers computed
from it in plain Python (independently of the SQL under test)."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from catalog.suggest import apply_term_counts, count_terms

BRANDS = ("Dell", "HP", "Apple", "Lenovo", "Acme")
COLORS = ("black", "silver", "white")
# leaf -> (parent, noun); nouns are words the english stemmer leaves alone
TREE = {"Laptops": ("Electronics", "laptop"), "Phones": ("Electronics", "phone"),
        "Kettles": ("Kitchen", "kettle")}
EDGES = [Decimal(e) for e in (25, 50, 100, 250, 500, 1000, 2500)]


@dataclass
class Item:
    product_id: int
    name: str
    description: str
    brand: str
    category: str
    category_id: int
    price: Decimal
    rating_avg: Decimal
    rating_count: int
    created_at: datetime
    status: str = "active"

    def words(self) -> set[str]:
        return set(re.findall(r"\w+", f"{self.name} {self.brand} {self.description}".lower()))


@dataclass
class Catalog:
    items: list[Item]
    categories: dict[str, int]  # name -> id
    parents: dict[int, int | None]

    def subtree(self, category_id: int) -> set[int]:
        out = {category_id}
        changed = True
        while changed:
            changed = False
            for cid, parent in self.parents.items():
                if parent in out and cid not in out:
                    out.add(cid)
                    changed = True
        return out


def _avg(total: int, count: int) -> Decimal:
    if not count:
        return Decimal("0.00")
    return (Decimal(total) / count).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


async def load_catalog(pool: asyncpg.Pool, *, seller_id: int | None = None,
                       count: int = 150, seed: int = 7) -> Catalog:
    rng = random.Random(seed)
    categories: dict[str, int] = {}
    parents: dict[int, int | None] = {}
    for leaf, (parent, _) in TREE.items():
        if parent not in categories:
            categories[parent] = await pool.fetchval(
                "INSERT INTO categories (name) VALUES ($1) RETURNING category_id", parent)
            parents[categories[parent]] = None
        categories[leaf] = await pool.fetchval(
            "INSERT INTO categories (name, parent_id) VALUES ($1, $2) RETURNING category_id",
            leaf, categories[parent])
        parents[categories[leaf]] = categories[parent]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # Boundary prices on purpose: bucket edges and the inclusive filter bounds.
    prices = [Decimal(p) for p in ("25.00", "49.99", "50.00", "100.00", "999.99", "1000.00",
                                   "2500.00", "12.50", "0.99")]
    items = []
    leaves = list(TREE)
    for n in range(count):
        leaf = leaves[n % len(leaves)]
        noun = TREE[leaf][1]
        brand = BRANDS[rng.randrange(len(BRANDS))]
        color = COLORS[rng.randrange(len(COLORS))]
        price = prices[n] if n < len(prices) else Decimal(rng.randrange(100, 300_000)) / 100
        count_r = rng.choice((0, 0, 1, 3, 8, 20))
        total = sum(rng.randint(1, 5) for _ in range(count_r))
        # Every fifth product mentions another product's noun only in its description.
        extra = TREE[leaves[(n + 1) % len(leaves)]][1] if n % 5 == 0 else "gadget"
        items.append(Item(
            product_id=0, name=f"{brand} Model{n} {noun.title()}, {color.title()}",
            description=f"A fine {color} item that pairs with any {extra}.", brand=brand,
            category=leaf, category_id=categories[leaf], price=price,
            rating_avg=_avg(total, count_r), rating_count=count_r,
            created_at=base + timedelta(hours=n * 7 % count, minutes=n),
            status="archived" if n % 37 == 36 else "active"))
        items[-1].rating_sum = total  # type: ignore[attr-defined]
    async with pool.acquire() as conn, conn.transaction():
        for item in items:
            item.product_id = await conn.fetchval(
                "INSERT INTO products (seller_id, name, description, brand, category_id, price,"
                " rating_avg, rating_count, rating_sum, status, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING product_id",
                seller_id, item.name, item.description, item.brand, item.category_id,
                item.price, item.rating_avg, item.rating_count, item.rating_sum,  # type: ignore
                item.status, item.created_at)
            await conn.execute("INSERT INTO inventory (product_id, available_qty)"
                               " VALUES ($1, $2)", item.product_id, item.product_id % 7)
        # Rows written behind the service's back: give autocomplete its vocabulary too.
        await apply_term_counts(conn, count_terms(
            (i.name, i.brand) for i in items if i.status == "active"))
    return Catalog(items=items, categories=categories, parents=parents)


# -- reference answers -------------------------------------------------------------------
def passes(item: Item, f: dict, skip: str = "") -> bool:
    if item.status != "active":
        return False
    if "categories" in f and skip != "category" and item.category_id not in f["categories"]:
        return False
    if "brands" in f and skip != "brand" and item.brand not in f["brands"]:
        return False
    if skip != "price":
        if "price_min" in f and item.price < f["price_min"]:
            return False
        if "price_max" in f and item.price > f["price_max"]:
            return False
    return not ("rating_min" in f and skip != "rating" and item.rating_avg < f["rating_min"])


def sort_key(sort: str):
    return {
        "price_asc": lambda i: (i.price, i.product_id),
        "price_desc": lambda i: (-i.price, -i.product_id),
        "rating": lambda i: (-i.rating_avg, -i.rating_count, -i.product_id),
        "newest": lambda i: (-i.created_at.timestamp(), -i.product_id),
    }[sort]


def expected_facets(matches: list[Item], f: dict) -> dict:
    brand = Counter(i.brand for i in matches if passes(i, f, "brand"))
    category = Counter(i.category_id for i in matches if passes(i, f, "category"))
    price: Counter = Counter()
    for i in matches:
        if passes(i, f, "price"):
            bucket = sum(1 for e in EDGES if i.price >= e)
            price[bucket] += 1
    rating = {m: sum(1 for i in matches if passes(i, f, "rating") and i.rating_avg >= m)
              for m in (4, 3, 2, 1)}
    lower = [Decimal(0), *EDGES]
    upper = [*EDGES, None]
    return {
        "brand": sorted(([b, n] for b, n in brand.items()), key=lambda x: (-x[1], x[0])),
        "category": sorted(([c, n] for c, n in category.items()), key=lambda x: (-x[1], x[0])),
        "price": [[str(lower[b]), None if upper[b] is None else str(upper[b]), n]
                  for b, n in sorted(price.items())],
        "rating": [[m, n] for m, n in rating.items() if n],
    }


def facets_as_lists(facets: dict) -> dict:
    """The API's facets in the reference shape (money compared as numbers)."""
    def money(value: str | None) -> str | None:
        return None if value is None else str(Decimal(value).normalize())
    return {
        "brand": [[v["value"], v["count"]] for v in facets["brand"]],
        "category": [[v["value"], v["count"]] for v in facets["category"]],
        "price": [[money(b["min"]), money(b["max"]), b["count"]] for b in facets["price"]],
        "rating": [[b["min"], b["count"]] for b in facets["rating"]],
    }


def normalize_reference(ref: dict) -> dict:
    def money(value: str | None) -> str | None:
        return None if value is None else str(Decimal(value).normalize())
    return {**ref, "price": [[money(a), money(b), n] for a, b, n in ref["price"]]}
