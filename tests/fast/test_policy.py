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
