"""One JSON error shape for the whole API: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from sam.errors import EntitlementRefused, NotFound


def _body(code: str, message: str, fields: dict | None = None, **extra) -> dict:
    error = {"code": code, "message": message, **extra}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _django_validation(exc: DjangoValidationError) -> Response:
    if hasattr(exc, "error_dict"):
        fields = {k: [str(m) for e in v for m in e.messages] for k, v in exc.error_dict.items()}
        return Response(_body("invalid", "The request is not valid.", fields), status=400)
    code = getattr(exc, "code", None) or "invalid"
    if code == "not_found":
        return Response(_body("not_found", " ".join(exc.messages)), status=404)
    return Response(_body(code, " ".join(exc.messages)), status=400)


def handle(exc, context):
    if isinstance(exc, EntitlementRefused):
        return Response(_body("entitlement_refused", exc.message, reason=exc.reason),
                        status=status.HTTP_409_CONFLICT)
    if isinstance(exc, NotFound):
        return Response(_body("not_found", " ".join(exc.messages)), status=404)
    if isinstance(exc, DjangoValidationError):
        return _django_validation(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(exc, exceptions.ValidationError):
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        response.data = _body("invalid", "The request is not valid.", fields)
    else:
        message = detail.get("detail", str(detail)) if isinstance(detail, dict) else str(detail)
        code = getattr(exc, "default_code", "error")
        response.data = _body(str(code), str(message))
    return response
