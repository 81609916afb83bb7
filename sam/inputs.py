"""The input layer: hostile input is refused at the edges and validated again in the domain.

Every endpoint gets, without doing anything (``sam.middleware.InputGuardMiddleware``, early in
MIDDLEWARE, with the validators below):

- NUL characters and unpaired surrogates in the path, any query parameter, any header value,
  the decoded Basic credentials, form fields and JSON bodies → 400 before sessions, CSRF or
  authentication touch them;
- a JSON body (any view that is not ``large_body``) nested deeper than ``MAX_DEPTH`` or holding
  an integer outside 64 bits → 400; the parsed document is kept on ``request.sam_json``;
- a body larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (Django's 2.5 MB) → 413 before it is read,
  except on views marked with ``large_body(limit)`` or a ``sam_body_limit`` attribute (check-in,
  import; DRF views use ``sam.api.base.LargeBodyMixin``), which get 413 above their own limit
  and read their body themselves with ``read_body`` after authenticating, checking it with
  ``loads``;
- an unhandled exception under /api, /candlepin or /rhsm → 500 with a generic text and a
  reference id; the full text goes to the log only.

Refusals speak the surface's error shape: Candlepin's ``displayMessage`` JSON under /candlepin
and /rhsm, ``{"error": {"code", "message"}}`` under /api, a plain 4xx page elsewhere.

Domain code validates the same rules with the helpers below (``check_text``, ``check_tree``,
``loads``, ``check_int``, ``check_datetime``, ``int_param``), so paths that bypass HTTP (commands,
the admin, tasks) refuse too. DRF views parse JSON with ``sam.api.parsers.JSONParser``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest

log = logging.getLogger(__name__)
V = TypeVar("V", bound=Callable[..., Any])  # a view function

INT32_MAX = 2**31 - 1  # PostgreSQL ``integer`` (IntegerField, PositiveIntegerField)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # ``bigint``, the widest integer column
DATE_MIN = datetime(1900, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 1, 1, tzinfo=UTC)
MAX_DEPTH = 32  # JSON nesting accepted outside the check-in (facts and attributes are flat)
BAD_TEXT = "must not contain NUL characters or unpaired surrogates"

# ``\u0000`` and surrogate escapes: the only ways NUL or a surrogate gets into parsed JSON
# (raw NUL bytes are invalid JSON, raw surrogates invalid UTF-8). Found by a C-speed search of
# the text of a multi-megabyte report, never by walking the parsed document (virt-who's
# reports hold no such escape: the few matches are then checked one by one).
_ESCAPE_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_ESCAPE_TEXT = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


class BadInput(ValidationError):
    """Input that no surface accepts (NUL, surrogates, too deep, out of range): a 400."""

    def __init__(self, message: str):
        super().__init__(message, code="invalid_input")
        self.text = message


# --- Checks for the domain -------------------------------------------------------------------

def bad_text(value: str) -> bool:
    """True for text PostgreSQL cannot store or psycopg cannot encode."""
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, label: str) -> Any:
    """``value`` unchanged, or ``BadInput`` when it is text with NUL or unpaired surrogates."""
    if isinstance(value, str) and bad_text(value):
        raise BadInput(f"{label} {BAD_TEXT}.")
    return value


def check_tree(data: Any, label: str, max_depth: int | None = MAX_DEPTH,
               int_range: tuple[int, int] | None = (INT64_MIN, INT64_MAX)) -> Any:
    """Walk a parsed JSON document (iteratively): every key and string clean, nesting at most
    ``max_depth``, integers inside ``int_range``. Returns ``data``."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if bad_text(item):
                raise BadInput(f"{label} {BAD_TEXT}.")
        elif isinstance(item, (dict, list)):
            if max_depth is not None and depth > max_depth:
                raise BadInput(f"{label} is nested more than {max_depth} levels deep.")
            if isinstance(item, dict):
                for key, value in item.items():
                    if isinstance(key, str) and bad_text(key):
                        raise BadInput(f"{label} {BAD_TEXT}.")
                    stack.append((value, depth + 1))
            else:
                stack.extend((value, depth + 1) for value in item)
        elif isinstance(item, int) and not isinstance(item, bool) and int_range is not None:
            if not int_range[0] <= item <= int_range[1]:
                raise BadInput(f"{label} holds an integer outside the range "
                               f"{int_range[0]}..{int_range[1]}.")
    return data


def escapes_bad_text(raw: bytes | str) -> bool:
    """Whether JSON text escapes a NUL or an unpaired surrogate (``\\ud83d\\ude00`` is a
    pair, ``\\\\u0000`` an escaped backslash): exact, without parsing."""
    is_bytes = isinstance(raw, (bytes, bytearray))
    backslash = 0x5C if is_bytes else "\\"
    high_ends_at = None  # where an unpaired high surrogate escape ends
    for match in (_ESCAPE_BYTES if is_bytes else _ESCAPE_TEXT).finditer(raw):
        start = match.start()
        before = start
        while before > 0 and raw[before - 1] == backslash:
            before -= 1
        if (start - before) % 2:  # the backslash is itself escaped: plain text follows
            continue
        code = int(match.group()[2:], 16)
        if high_ends_at is not None:
            if start == high_ends_at and 0xDC00 <= code <= 0xDFFF:
                high_ends_at = None
                continue
            return True
        if 0xD800 <= code <= 0xDBFF:
            high_ends_at = match.end()
        else:  # NUL, or a low surrogate without its high one
            return True
    return high_ends_at is not None


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes | str, label: str = "The JSON document", *, strict: bool = False) -> Any:
    """Parse JSON. Malformed → ``ValueError`` (the caller words it); nested beyond what the
    parser can handle, NUL or unpaired surrogates anywhere → ``BadInput``.

    ``strict=False`` is for multi-megabyte reports: the text is searched, the document is not
    walked. ``strict=True`` (API bodies, imports) walks it for ``MAX_DEPTH`` and 64-bit
    integers and refuses NaN/Infinity.
    """
    try:
        data = json.loads(raw, parse_constant=_no_constant) if strict else json.loads(raw)
    except RecursionError:
        raise BadInput(f"{label} is nested too deeply.") from None
    if strict:
        return check_tree(data, label)
    # (Decoded text may carry a raw surrogate; bytes cannot: they are strict UTF-8.)
    if escapes_bad_text(raw) or (isinstance(raw, str) and bad_text(raw)):
        raise BadInput(f"{label} {BAD_TEXT}.")
    return data


def check_int(value: int, label: str, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    """An integer (a column value or one derived from several) inside its column's range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{label} must be a whole number.")
    if not minimum <= value <= maximum:
        raise BadInput(f"{label} must be between {minimum} and {maximum} (got {value}).")
    return value


def int_param(params, name: str, default: int, minimum: int = 1, maximum: int = INT32_MAX) -> int:
    """A whole-number query parameter within bounds; ``BadInput`` otherwise."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    if not text.isdigit() or len(text) > 19:
        raise BadInput(f"{name} must be a whole number between {minimum} and {maximum}.")
    return check_int(int(text), name, minimum, maximum)


def check_datetime(value: datetime, label: str) -> datetime:
    """A stored date-time lies between 1900-01-01 and 9999-01-01 (UTC): every later reader
    (psycopg, time-zone conversion, "one year later") can handle it."""
    if not isinstance(value, datetime):
        raise BadInput(f"{label} must be a date-time.")
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadInput(f"{label} must carry a time zone.")
    if not DATE_MIN <= value <= DATE_MAX:
        raise BadInput(f"{label} must be between 1900-01-01 and 9999-01-01 (UTC).")
    return value


def validate_datetime_range(value: datetime) -> None:
    """Form/model field validator form of ``check_datetime`` (naive values count as UTC)."""
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    check_datetime(value, "The date")


def reference() -> str:
    """A short id that ties a generic message shown to a client to the full text in the log."""
    return secrets.token_hex(6)


# --- Bodies of large-body views --------------------------------------------------------------

def large_body(limit: int | str | Callable[[], int]) -> Callable[[V], V]:
    """Mark a function view that takes a body beyond Django's limit: ``limit`` bytes, the name
    of the setting holding it, or a function giving it. It reads the body itself (``read_body``,
    or a multipart upload streamed to disk)."""

    def mark(view: V) -> V:
        setattr(view, "sam_body_limit", limit)  # noqa: B010 - read back by body_limit
        return view

    return mark


def body_limit(view) -> int | None:
    """The own limit of a marked view (function, class-based ``view_class`` or DRF ``cls``)."""
    for holder in (view, getattr(view, "view_class", None), getattr(view, "cls", None)):
        limit = getattr(holder, "sam_body_limit", None)
        if callable(limit):
            return int(limit())
        if limit is not None:
            return int(getattr(settings, limit)) if isinstance(limit, str) else int(limit)
    return None


def read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The request body, at most ``limit`` bytes, or None when it is larger (answer 413).

    Django's ``request.body`` refuses anything above ``DATA_UPLOAD_MAX_MEMORY_SIZE``; a marked
    view reads the stream itself and leaves the result where ``request.body`` finds it.
    """
    if hasattr(request, "_body"):
        return request._body if len(request._body) <= limit else None
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > limit:
        return None
    data = request.read(limit + 1) if length else b""
    if len(data) > limit:
        return None
    request._body = data  # what HttpRequest.body caches; later readers get the same bytes
    request._stream = io.BytesIO(data)
    return data
