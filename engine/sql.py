"""SQL composed from fragments: one builder numbers the placeholders.

A statement assembled from pieces (a CTE from one module, a clause from another) takes
its ``$n`` from a ``Params`` passed through all of them, so adding a column or a
fragment can never shift another fragment's numbers by hand.

    arg = Params()
    sql = f"UPDATE t SET a = {arg(1)} WHERE id = {arg(order_id, '::bigint')}"
    await conn.execute(sql, *arg.values)
"""

from __future__ import annotations

from typing import Any


class Params:
    """Positional SQL parameters collected while a statement is assembled: each call
    appends a value and returns its placeholder (with an optional cast)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"
