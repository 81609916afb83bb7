"""How API callers prove who they are: session (web UI), HTTP Basic, or a token.

``orgs.auth`` verifies (and throttles); these classes only turn its refusals into DRF's
exceptions, answered in the API's error shape (401, or 429 with ``Retry-After``).
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from orgs.auth import BadCredentials, Throttled, basic_principal, bearer_principal


def _drf_error(exc: BadCredentials | Throttled) -> exceptions.APIException:
    if isinstance(exc, Throttled):
        return exceptions.Throttled(wait=exc.retry_after, detail=str(exc))
    return exceptions.AuthenticationFailed(str(exc))


class TokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sam_...`` (or ``Token sam_...``)."""

    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in self.keywords:
            return None
        try:
            principal = bearer_principal(request, value)
        except (BadCredentials, Throttled) as exc:
            raise _drf_error(exc) from None
        return principal, principal.token

    def authenticate_header(self, request):
        return 'Bearer realm="sam"'


class BasicAuthentication(authentication.BaseAuthentication):
    """HTTP Basic with a user's password, or a token as the password."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user = basic_principal(request)
        except (BadCredentials, Throttled) as exc:
            raise _drf_error(exc) from None
        return user, getattr(user, "token", None)

    def authenticate_header(self, request):
        return 'Basic realm="sam"'


class TokenScheme(OpenApiAuthenticationExtension):
    """OpenAPI description of the token login."""

    target_class = "sam.api.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}


class BasicScheme(OpenApiAuthenticationExtension):
    target_class = "sam.api.authentication.BasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}
