"""One home for the bytes that leave and enter the process: the JSON encoder (money as
strings), the error body of the HTTP contract, and Redis answers as text.

Built once at import (msgspec encoders are reusable and thread-safe); every module that
writes JSON or reads a Redis reply that may be bytes or str uses these.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.errors import FlashsaleError

# Decimal as a JSON string: money never passes through a float on the way out.
_encoder = msgspec.json.Encoder(decimal_format="string")


def encode(value: Any) -> bytes:
    """JSON bytes of ``value`` (msgspec Structs, dicts, Decimal as strings)."""
    return _encoder.encode(value)


def error_document(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The contract's error shape: ``{"error": {"code", "message", "details"}}``."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_body(error: FlashsaleError) -> bytes:
    """A typed error as the bytes the gateway's error middleware sends for it."""
    return encode(error_document(error.code, error.message, error.details))


def text(value: bytes | str, errors: str = "strict") -> str:
    """A Redis answer (stream id, name, message, state) as str, whether the client was
    built with ``decode_responses`` or not; ``errors`` as ``bytes.decode`` takes it
    ("backslashreplace" keeps bytes that are no UTF-8 readable)."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else value
