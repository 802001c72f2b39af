"""The field types request bodies and queries share: ids, idempotency keys, paging, and
the one text pattern. Each route module adds only the types of its own domain."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

# Postgres text cannot hold NUL: refused at the edge (422), never a 500 later.
NO_NUL = r"^[^\x00]*$"

Id = Annotated[int, Meta(ge=1, le=2**63 - 1)]  # a BIGINT primary key
Key = Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL)]  # idempotency key
PageSize = Annotated[int, Meta(ge=1, le=100)]
