"""Candlepin's response conventions: JSON bodies, error shape, request id, timestamps."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse

API_VERSION = "4.4.0-sam"
JSON = dict[str, Any]  # a JSON object as Candlepin sends or reads it


class ApiRequest(HttpRequest):
    """A request whose caller the view's decorator established: ``api_user`` is the user, or
    the token principal of an API token (``orgs.auth.basic_principal``)."""

    api_user: Any


def timestamp(moment: datetime | None) -> str | None:
    """``2026-08-21T14:51:27+0000`` as Candlepin writes it."""
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


def request_uuid(request: HttpRequest) -> str:
    """The id of this request in Candlepin's header and error bodies (one per request)."""
    if not hasattr(request, "_candlepin_uuid"):
        setattr(request, "_candlepin_uuid", str(uuid.uuid4()))  # noqa: B010 - not a declared attribute
    return str(getattr(request, "_candlepin_uuid"))  # noqa: B009


def json_response(request: HttpRequest, data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(data), status=status, content_type="application/json")
    response["x-candlepin-request-uuid"] = request_uuid(request)
    response["X-Version"] = API_VERSION
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def no_content(request: HttpRequest) -> HttpResponse:
    """204 with no body at all (a body would corrupt a keep-alive connection's framing)."""
    response = HttpResponse(status=204)
    del response["Content-Type"]
    response["x-candlepin-request-uuid"] = request_uuid(request)
    response["X-Version"] = API_VERSION
    return response


def error(request: HttpRequest, status: int, message: str,
          headers: dict[str, str] | None = None) -> HttpResponse:
    return json_response(request, {"displayMessage": message, "requestUuid": request_uuid(request)},
                         status=status, headers=headers)


def query_bool(request: HttpRequest, name: str, default: bool) -> bool | None:
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
