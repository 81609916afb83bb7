"""Candlepin's response conventions: JSON bodies, error shape, request id, timestamps."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from django.http import HttpResponse

API_VERSION = "4.4.0-sam"


def timestamp(moment: datetime | None) -> str | None:
    """``2026-08-21T14:51:27+0000`` as Candlepin writes it."""
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


def request_uuid(request) -> str:
    if not hasattr(request, "_candlepin_uuid"):
        request._candlepin_uuid = str(uuid.uuid4())
    return request._candlepin_uuid


def json_response(request, data, status: int = 200, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(data), status=status, content_type="application/json")
    response["x-candlepin-request-uuid"] = request_uuid(request)
    response["X-Version"] = API_VERSION
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error(request, status: int, message: str, headers: dict | None = None) -> HttpResponse:
    return json_response(request, {"displayMessage": message, "requestUuid": request_uuid(request)},
                         status=status, headers=headers)


def query_bool(request, name: str, default: bool) -> bool | None:
    """Case-insensitive booleans (``cloaked=False``); None for a value that is not one."""
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    return None
