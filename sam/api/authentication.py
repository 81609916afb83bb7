"""How API callers prove who they are: session (web UI), HTTP Basic, or a token."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from orgs.auth import TokenPrincipal, looks_like_token, verify
from sam.candlepin.auth import BadCredentials, basic_user


class TokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sam_...`` (or ``Token sam_...``)."""

    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in self.keywords:
            return None
        value = value.strip()
        token = verify(value) if looks_like_token(value) else None
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        return TokenPrincipal(token), token

    def authenticate_header(self, request):
        return 'Bearer realm="sam"'


class BasicAuthentication(authentication.BaseAuthentication):
    """HTTP Basic with a user's password, or a token as the password."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user = basic_user(request)
        except BadCredentials as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
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
