"""The app's secret values are masked by every redactor of the process, wherever they appear.

Values are random per test: the set is process-wide, and other tests share the process."""

from __future__ import annotations

import secrets

from runtime.redact import MIN_SECRET_CHARS, Redactor, mask_secret_values


def value(prefix: str = "v") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def test_a_secret_value_is_masked_inside_any_text_even_where_no_pattern_would_find_it():
    made_before = Redactor()  # redactors made before the values are added mask them too
    secret = value("plain")
    mask_secret_values([secret])
    for r in (made_before, Redactor()):
        assert r.redact_text(f"calling upstream with {secret} now") == "calling upstream with [redacted:secret] now"
        assert r.redact({"note": [f"x{secret}y"]}) == {"note": ["x[redacted:secret]y"]}


def test_a_cached_result_is_dropped_when_a_secret_value_is_added():
    r = Redactor()
    secret = value("cached")
    assert r.redact_text(secret) == secret  # cached as clean
    mask_secret_values([secret])
    assert r.redact_text(secret) == "[redacted:secret]"


def test_a_value_containing_another_is_masked_whole():
    inner = value("inner")
    outer = f"{inner}-and-more"
    mask_secret_values([inner, outer])
    assert Redactor().redact_text(f"[{outer}]") == "[[redacted:secret]]"


def test_values_too_short_to_mask_are_returned_and_never_masked():
    short = "a" * (MIN_SECRET_CHARS - 1)
    assert mask_secret_values([short, value("long")]) == [short]
    assert Redactor().redact_text(f"{short} {short}") == f"{short} {short}"
