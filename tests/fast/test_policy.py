"""The edge's text policy, without servers: the byte-level shortcut never lets a string
with a refused character through, however the client's JSON encoder spelled it."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy import has_control, might_hold_control

ENCODERS = (
    lambda s: json.dumps({"k": s}).encode(),
    lambda s: json.dumps({"k": s}, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    lambda s: msgspec.json.encode({"k": s}),
)


@given(st.text(alphabet=st.characters(codec=None)), st.sampled_from(range(len(ENCODERS))))
def test_a_body_whose_string_has_a_control_character_is_always_walked(text, which) -> None:
    try:
        raw = ENCODERS[which](text)
    except (UnicodeEncodeError, msgspec.EncodeError):
        return  # an encoder that cannot spell it sends nothing
    if has_control(text):
        assert might_hold_control(raw)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e,
                                      exclude_characters="\\")))
def test_plain_ascii_text_skips_the_walk(text) -> None:
    assert not might_hold_control(msgspec.json.encode({"k": text, "n": 1}))


def _bodies(kind: type) -> list[type]:
    found = []
    for sub in kind.__subclasses__():
        found += [sub, *_bodies(sub)]
    return found


def test_every_amount_field_of_every_body_is_checked() -> None:
    """Body.__post_init__ checks only the fields ``decimal_fields`` names: every field
    typed Decimal (Money, Price; optional or in a union) of every route's body must be
    among them, or a bad amount there would get through."""
    import typing
    from decimal import Decimal

    import gateway.app  # noqa: F401  (every route's body type, registered)
    from gateway.api import Body
    from gateway.policy import decimal_fields

    def amounts(hint: object) -> bool:
        if isinstance(hint, type):
            return issubclass(hint, Decimal)
        return any(amounts(arg) for arg in typing.get_args(hint))

    bodies = _bodies(Body)
    assert len(bodies) > 20
    with_amounts = 0
    for kind in bodies:
        hints = typing.get_type_hints(kind)
        expected = tuple(n for n in kind.__struct_fields__ if amounts(hints[n]))
        assert decimal_fields(kind) == expected, kind
        with_amounts += bool(expected)
    assert with_amounts >= 5
