"""The demo names what the API refused in one line instead of failing on a missing field."""

from __future__ import annotations

import click
import pytest

from cli.demo import _created


class _Response:
    def __init__(self, status: int, body) -> None:
        self.status, self._body = status, body

    async def json(self, content_type=None):
        return self._body


async def test_a_refused_create_is_one_line_with_the_apis_reason() -> None:
    refused = _Response(409, {"error": {"code": "conflict",
                                        "message": "sale 1 already exists in Redis"}})
    with pytest.raises(click.ClickException) as caught:
        await _created(refused, "the sale")
    message = caught.value.format_message()
    assert "\n" not in message
    assert "409" in message and "conflict" in message and "already exists" in message


async def test_a_created_body_is_returned() -> None:
    assert await _created(_Response(201, {"sale_id": 7}), "the sale") == {"sale_id": 7}
