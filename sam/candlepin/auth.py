"""HTTP Basic for the Candlepin-compatible API: ``orgs.auth`` decides who the caller is, this
module only answers its refusals the way Candlepin does (``displayMessage`` JSON)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from orgs.auth import BadCredentials, Throttled, basic_principal
from sam.candlepin.http import error

__all__ = ["BadCredentials", "Throttled", "basic_user", "refusal"]


def basic_user(request: HttpRequest) -> Any:
    """The user (or token principal) of the request's Basic credentials."""
    return basic_principal(request)


def refusal(request: HttpRequest, exc: BadCredentials | Throttled) -> HttpResponse:
    """401 with a Basic challenge, or 429 with ``Retry-After`` for a throttled client."""
    if isinstance(exc, Throttled):
        return error(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    return error(request, 401, str(exc), headers={"WWW-Authenticate": 'Basic realm="sam"'})
