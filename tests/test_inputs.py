"""The input layer's pure checks (sam/inputs.py), without a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam import inputs

# Text made of the characters that matter: NUL, surrogates, backslashes, 'u', hex digits.
TRICKY = st.text(alphabet=st.sampled_from(
    ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00", "\\", "u", "0", "d",
     "8", "a", "x", "é", "\U0001f600"]), max_size=12)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(TRICKY, max_size=4), st.booleans())
def test_escape_search_agrees_with_walking_the_document(texts, ascii_only):
    """The report path never walks a document: its text search must decide exactly as a walk
    of the parsed document would (where an escaped pair of surrogates is one character)."""
    raw = json.dumps({"k": texts, "v": {t: t for t in texts}}, ensure_ascii=ascii_only)
    try:
        inputs.check_tree(json.loads(raw), "document", max_depth=None)
        walk_says_bad = False
    except inputs.BadInput:
        walk_says_bad = True
    if ascii_only:
        assert inputs.escapes_bad_text(raw) == walk_says_bad
        assert inputs.escapes_bad_text(raw.encode()) == walk_says_bad
    with pytest.raises(inputs.BadInput) if walk_says_bad else _nothing():
        inputs.loads(raw)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_loads_refuses_depth_and_keeps_malformed_as_value_error():
    with pytest.raises(inputs.BadInput, match="nested too deeply"):
        inputs.loads("[" * 5000 + "]" * 5000)
    with pytest.raises(inputs.BadInput, match="nested more than 32"):
        inputs.loads("[" * 40 + "]" * 40, strict=True)
    with pytest.raises(inputs.BadInput, match="integer outside"):
        inputs.loads('{"n": 18446744073709551616}', strict=True)
    with pytest.raises(ValueError):
        inputs.loads('{"n": NaN}', strict=True)
    with pytest.raises(ValueError):
        inputs.loads(b"{not json")
    assert inputs.loads(b'{"e": "\\ud83d\\ude00", "b": "\\\\u0000"}') == {"e": "\U0001f600",
                                                                        "b": "\\u0000"}


def test_dates_between_1900_and_9999():
    ok = datetime(1900, 1, 1, tzinfo=UTC)
    assert inputs.check_datetime(ok, "start") == ok
    for bad in (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
                datetime(1899, 12, 31, 23, 59, tzinfo=UTC),
                datetime(9999, 12, 31, tzinfo=timezone(timedelta(hours=-5)))):
        with pytest.raises(inputs.BadInput, match="between 1900-01-01 and 9999-01-01"):
            inputs.check_datetime(bad, "start")
    with pytest.raises(inputs.BadInput, match="time zone"):
        inputs.check_datetime(datetime(2020, 1, 1), "start")


def test_int_param_bounds():
    assert inputs.int_param({}, "page", 1) == 1
    assert inputs.int_param({"page": "7"}, "page", 1) == 7
    for bad in ("0", "-1", "1e3", str(10**30), "3000000000", "x"):
        with pytest.raises(inputs.BadInput):
            inputs.int_param({"page": bad}, "page", 1)
