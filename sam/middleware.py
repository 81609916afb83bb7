"""Middleware at the HTTP edge: hostile input refused before any view (``InputGuardMiddleware``,
with the validators of sam/inputs.py), Secure cookies on TLS, gzip for HTML pages.

The Content-Security-Policy comes from django-csp (settings ``CONTENT_SECURITY_POLICY``), HSTS
and the other security headers from Django's ``SecurityMiddleware``; README "Security headers"
lists them all.
"""

from __future__ import annotations

import base64
import binascii
import logging

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.gzip import GZipMiddleware
from django.template.loader import render_to_string

from sam.candlepin.http import error
from sam.inputs import BAD_TEXT, BadInput, bad_text, body_limit, loads, reference

log = logging.getLogger(__name__)


class SecureCookiesOverTLSMiddleware:
    """Marks every cookie of a response ``Secure`` when its request came over TLS.

    ``request.is_secure()`` is true under ``manage.py serve`` (gunicorn terminates TLS) and
    behind a proxy listed in ``SAM_FORWARDED_ALLOW_IPS`` that sends ``X-Forwarded-Proto:
    https``; the plain-HTTP development server gets cookies it can send back. Placed outside
    the session, CSRF and messages middleware so their cookies are already set.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.is_secure():
            for morsel in response.cookies.values():
                morsel["secure"] = True
        return response


class HtmlGZipMiddleware(GZipMiddleware):
    """Django's gzip for HTML pages answering GET, so never for a page that shows a secret.

    BREACH needs a secret and attacker-chosen text in one compressed body. Django's gzip pads
    each response with random bytes (its BREACH mitigation) and the CSRF token is masked per
    response; on top of that the JSON APIs (credentials, tokens) stay uncompressed, and so do
    responses to POST: the pages that show a new token or a virt-who configuration with one are
    such answers. Static files come compressed from WhiteNoise.
    """

    def process_response(self, request, response):
        if request.method not in ("GET", "HEAD"):
            return response
        if not response.get("Content-Type", "").startswith("text/html"):
            return response
        return super().process_response(request, response)


# --- The middleware --------------------------------------------------------------------------

def _surface(request: HttpRequest) -> str:
    path = request.path_info or ""
    if path.startswith(("/candlepin/", "/rhsm/")) or path in ("/candlepin", "/rhsm"):
        return "candlepin"
    if path.startswith("/api/"):
        return "api"
    return "ui"


def refuse(request: HttpRequest, status: int, message: str, code: str = "invalid_input",
           headers: dict | None = None) -> HttpResponse:
    """A 4xx/5xx in the error shape of the surface the request went to."""
    surface = _surface(request)
    if surface == "candlepin":
        return error(request, status, message, headers=headers)
    if surface == "api":
        response: HttpResponse = JsonResponse({"error": {"code": code, "message": message}},
                                              status=status)
    else:
        response = HttpResponse(
            render_to_string("sam/refused.html", {"status": status, "message": message}),
            status=status, content_type="text/html; charset=utf-8")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _credentials_problem(header: str) -> str | None:
    """Basic credentials that decode to NUL or unpaired surrogates (anything else is left to
    authentication, which answers 401)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if b"\x00" in raw:
        return "The Basic credentials contain a NUL character."
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None  # plain invalid UTF-8: authentication refuses it
        return "The Basic credentials contain an unpaired surrogate."
    return None


def _request_problem(request: HttpRequest) -> str | None:
    if bad_text(request.path_info or ""):
        return f"The path {BAD_TEXT}."
    for name, values in request.GET.lists():
        if bad_text(name) or any(bad_text(v) for v in values):
            return f"The query parameter {name[:40]!r} {BAD_TEXT}."
    for key, value in request.META.items():
        if (key.startswith("HTTP_") or key == "CONTENT_TYPE") and isinstance(value, str) \
                and bad_text(value):
            return f"The header {key.removeprefix('HTTP_').replace('_', '-').title()} {BAD_TEXT}."
    return _credentials_problem(request.META.get("HTTP_AUTHORIZATION", ""))


def _is_form(content_type: str) -> bool:
    return content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


def _body_problem(request: HttpRequest) -> str | None:
    """Form fields and JSON bodies of ordinary (size-limited) requests."""
    content_type = (request.content_type or "").lower()
    if _is_form(content_type):
        for name, values in request.POST.lists():
            if bad_text(name) or any(bad_text(v) for v in values):
                return f"The form field {name[:40]!r} {BAD_TEXT}."
        for name in request.FILES:
            if bad_text(name):
                return f"A form field name {BAD_TEXT}."
        return None
    if request.method in ("GET", "HEAD", "OPTIONS") or not request.META.get("CONTENT_LENGTH"):
        return None
    body = request.body
    if not body.strip():
        return None
    looks_json = "json" in content_type or (
        content_type in ("", "text/plain") and body.lstrip()[:1] in (b"{", b"["))
    if looks_json:
        try:
            # the parsed document, for the view (sam.inputs: ``request.sam_json``)
            setattr(request, "sam_json", loads(body, "The JSON body", strict=True))  # noqa: B010
        except BadInput as exc:
            return exc.text
        except (ValueError, UnicodeDecodeError):
            return None  # malformed: the view answers in its own words
    elif content_type.startswith("text/") and b"\x00" in body:
        return f"The body {BAD_TEXT}."
    return None


class InputGuardMiddleware:
    """Refuses hostile input before any view, session or authentication code sees it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = _request_problem(request)
        if problem:
            return refuse(request, 400, problem)
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        own_limit = body_limit(view_func)
        limit = own_limit if own_limit is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return refuse(request, 400, "The Content-Length header is not a number.")
        if limit is not None and length > limit:  # refused unread
            return refuse(request, 413, "The request body is larger than the configured limit "
                                        f"of {limit} bytes.", code="too_large")
        if own_limit is not None:
            return None  # the view reads and checks its own (large) body
        try:
            problem = _body_problem(request)
        except (SuspiciousOperation, MultiPartParserError, BadRequest) as exc:
            return refuse(request, 400, f"The request body cannot be read: {exc}")
        if problem:
            return refuse(request, 400, problem)
        return None

    def process_exception(self, request, exception):
        """Errors under the JSON surfaces answer in their shape; internals stay in the log."""
        if _surface(request) == "ui":
            return None
        if isinstance(exception, Http404):
            return refuse(request, 404, "Not found.", code="not_found")
        if isinstance(exception, PermissionDenied):
            return refuse(request, 403, "Permission denied.", code="permission_denied")
        if isinstance(exception, (SuspiciousOperation, MultiPartParserError, BadRequest)):
            log.warning("bad request %s %s: %r", request.method, request.path, exception)
            return refuse(request, 400, "The request is not valid.", code="bad_request")
        ref = reference()
        log.error("internal error (reference %s) on %s %s", ref, request.method,
                  request.path, exc_info=exception)
        return refuse(request, 500, f"Internal server error (reference {ref}); the server's "
                                    "log has the details.", code="server_error")
