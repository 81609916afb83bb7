"""Who a request is: passwords (HTTP Basic, the sign-in form), API tokens, and their throttle.

This is the one place that verifies credentials. The REST API (``sam/api/authentication.py``)
and the Candlepin adapter (``sam/candlepin/auth.py``) sit on top and only translate its answers
into their wire formats; the sign-in pages use ``LoginForm``.

Public functions (what another credential type, e.g. consumer certificates, plugs into):

- ``parse_basic(header) -> (username, password)``: a Basic ``Authorization`` header decoded;
  ``BadCredentials`` when missing or malformed.
- ``basic_principal(request)``: the user (or ``TokenPrincipal`` when the password is an API
  token) named by the request's Basic credentials.
- ``bearer_principal(request, value)``: the ``TokenPrincipal`` of a ``Bearer`` token.
- ``check_throttle(request, username)``: raise ``Throttled`` when the client address (alone, or
  with ``username``) had too many recent failures. Call it BEFORE verifying anything, so a
  locked-out client costs no password hash and learns nothing.
- ``record_failure(request, username)``: count one failed verification.
- ``client_address(request)``: the address throttling counts (``REMOTE_ADDR``; the last
  ``X-Forwarded-For`` entry only when the peer is in ``SAM_FORWARDED_ALLOW_IPS``).
- ``BadCredentials`` (answer 401) and ``Throttled`` (answer 429 with ``retry_after`` seconds).

A new credential type follows the same three steps: ``check_throttle``, verify, and on failure
``record_failure`` then ``BadCredentials``; on success it returns an object that
``orgs.services.has_role_perm`` understands (a user, or a principal with a ``token``).

Throttling (performance.md R8) is django-axes with its database handler, so every web process
sees the same counters: after ``AXES_FAILURE_LIMIT`` failures within ``AXES_COOLOFF_TIME`` per
(address, username) and per address, further attempts are refused until the cool-off passed.

Tokens have the format ``sam_<prefix>_<secret>``: the prefix finds the row by index, an
HMAC-SHA256 of the whole token (keyed with ``SECRET_KEY``) is compared in constant time.
Rotating ``SECRET_KEY`` invalidates every token.

Password hashes are deliberately slow (PBKDF2) and virt-who authenticates every request, so a
verified (username, password) pair is remembered for ``CREDENTIAL_CACHE_SECONDS`` in Django's
cache (Redis when configured: every web process shares it). The key is an HMAC of the pair,
the value the user's id and an HMAC of its password hash: a changed password or a deactivated
user misses at once. Tokens are not cached: a revoked token is refused at its next request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.db.models import Max, Q
from django.http import HttpRequest, QueryDict
from django.utils import timezone

from orgs.models import ApiToken

TOKEN_PREFIX = "sam_"
LAST_USED_EVERY = timedelta(minutes=1)
CREDENTIAL_CACHE_SECONDS = 300
USERNAME_MAX = 150  # Django's username column; longer names cannot exist


class BadCredentials(Exception):
    """Missing, malformed or wrong credentials: 401."""


class Throttled(Exception):
    """Too many recent failures from this client: 429 with ``Retry-After: retry_after``."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(f"Too many failed sign-in attempts from this address; try again in "
                         f"{minutes} minute{'s' if minutes != 1 else ''}.")


# --- The client and the throttle ----------------------------------------------------------------

def _http_request(request) -> HttpRequest:
    """The Django request behind a DRF ``Request``."""
    return getattr(request, "_request", request)


class _HeaderView:
    """What the throttle (axes) is shown of a request: its address, path and headers, never its
    body. Credentials come from headers or an already parsed sign-in form; axes would otherwise
    parse a failed request's body as a form to log it (a check-in body may be 64 MiB)."""

    def __init__(self, request: HttpRequest):
        self.META = request.META
        self.path = request.path
        self.method = request.method
        self.GET = QueryDict()
        self.POST = QueryDict()


def _view(request) -> _HeaderView:
    """The one ``_HeaderView`` of ``request`` (kept on it: axes' attributes live on the view)."""
    if isinstance(request, _HeaderView):
        return request
    request = _http_request(request)
    view = getattr(request, "sam_credential_view", None)
    if view is None:
        view = request.sam_credential_view = _HeaderView(request)
    return view


def _ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return None


def client_address(request) -> str | None:
    """The address failures are counted for: ``REMOTE_ADDR``, or the last ``X-Forwarded-For``
    entry (the one our proxy appended) when the peer is a proxy in ``SAM_FORWARDED_ALLOW_IPS``.
    None when there is no usable IP address (e.g. a Unix socket)."""
    meta = _http_request(request).META
    peer = _ip(meta.get("REMOTE_ADDR"))
    trusted = settings.SAM_FORWARDED_ALLOW_IPS
    if peer is not None and ("*" in trusted or peer in trusted):
        forwarded = [item for item in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if item.strip()]
        if forwarded:
            return _ip(forwarded[-1]) or peer
    return peer


def throttle_username(request, credentials: dict | None) -> str | None:
    """The username a failure is counted for (axes' ``AXES_USERNAME_CALLABLE``): as given,
    cut to what a username can be, so a hostile value is stored as harmless text."""
    name = (credentials or {}).get("username")
    if name is None:
        return None
    return str(name).replace("\x00", "")[:USERNAME_MAX]


def _retry_after(request: _HeaderView) -> int:
    """Seconds until the last counted failure of this address leaves the window."""
    last = AccessAttempt.objects.filter(ip_address=request.axes_ip_address).aggregate(
        last=Max("attempt_time"))["last"]
    cool_off = get_cool_off(request) or timedelta(0)
    if last is None:
        return max(1, int(cool_off.total_seconds()))
    return max(1, math.ceil((last + cool_off - timezone.now()).total_seconds()))


def check_throttle(request, username: str | None) -> None:
    """``Throttled`` when this client may not try a credential now. Call before verifying."""
    view = _view(request)
    if not AxesProxyHandler.is_allowed(view, {"username": username}):
        raise Throttled(_retry_after(view))
    # ThrottleBackend need not ask again, whichever of the two authenticate() is given
    view.sam_throttle_checked = _http_request(request).sam_throttle_checked = True


def record_failure(request, username: str | None) -> None:
    """Count one failed verification (axes listens to Django's ``user_login_failed``)."""
    user_login_failed.send(sender=__name__, credentials={"username": username},
                           request=_view(request))


class ThrottleBackend(AxesStandaloneBackend):
    """First in ``AUTHENTICATION_BACKENDS``: any ``authenticate(request, ...)`` of a locked-out
    client is refused before a password is hashed. Without a request (operator commands) there
    is no client to throttle; a request already checked by ``check_throttle`` is not asked
    twice."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None or getattr(request, "sam_throttle_checked", False):
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


# --- Passwords -----------------------------------------------------------------------------------

def parse_basic(header: str | None) -> tuple[str, str]:
    """``(username, password)`` of a Basic ``Authorization`` header; ``BadCredentials`` if none."""
    if not header:
        raise BadCredentials("Authentication required.")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise BadCredentials("Only HTTP Basic authentication is accepted here.")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCredentials("Malformed Basic authorization header.") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username or "\x00" in decoded:
        raise BadCredentials("Malformed Basic authorization header.")
    return username, password


def _hmac(text: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def _cache_key(username: str, password: str) -> str:
    return "sam:credential:" + _hmac(f"{username}\0{password}")


def _cached_user(key: str):
    hit = cache.get(key)
    if not hit:
        return None
    user = get_user_model().objects.filter(pk=hit[0], is_active=True).first()
    if user is None or not hmac.compare_digest(_hmac(user.password), hit[1]):
        return None
    return user


def password_user(request, username: str, password: str):
    """The active user with this username and password, through the throttle and the cache;
    ``BadCredentials`` or ``Throttled`` otherwise. An unknown user costs one hash like a wrong
    password (Django's ModelBackend), so the two cannot be told apart."""
    view = _view(request)
    check_throttle(view, username)
    key = _cache_key(username, password)
    user = _cached_user(key)
    if user is not None:
        return user
    user = authenticate(view, username=username, password=password)
    if user is None or not user.is_active:  # authenticate() has counted the failure
        raise BadCredentials("Invalid username or password.")
    cache.set(key, (user.pk, _hmac(user.password)), CREDENTIAL_CACHE_SECONDS)
    return user


def basic_principal(request: HttpRequest) -> Any:
    """The user named by the request's Basic credentials, or the ``TokenPrincipal`` when the
    password is an API token (any username: a virt-who configuration never needs to hold a
    person's password; the request then acts with the token's org and role only)."""
    username, password = parse_basic(_http_request(request).META.get("HTTP_AUTHORIZATION"))
    if looks_like_token(password):
        return token_principal(request, password, username=username)
    return password_user(request, username, password)


# --- The sign-in forms ---------------------------------------------------------------------------

class _Throttled:
    """Sign-in form behaviour: the throttle is asked before the password is checked."""

    throttled: Throttled | None = None

    def clean(self):
        username = self.cleaned_data.get("username")
        if username is not None and self.cleaned_data.get("password"):
            try:
                check_throttle(self.request, username)
            except Throttled as exc:
                self.throttled = exc
                raise forms.ValidationError(str(exc), code="throttled") from None
        return super().clean()


class LoginForm(_Throttled, AuthenticationForm):
    """The web UI's sign-in form."""


class AdminLoginForm(_Throttled, AdminAuthenticationForm):
    """The operators' admin sign-in form."""


# --- API tokens ----------------------------------------------------------------------------------

def _digest(plaintext: str) -> str:
    return _hmac(plaintext)


def make_token() -> tuple[str, str, str]:
    """A new ``(plaintext, prefix, digest)``."""
    prefix = secrets.token_hex(6)
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return plaintext, prefix, _digest(plaintext)


def looks_like_token(value: str | None) -> bool:
    return bool(value) and value.startswith(TOKEN_PREFIX) and value.count("_") >= 2


@dataclass(frozen=True)
class TokenPrincipal:
    """Who a request is when it authenticated with a token: the token's org and role only."""

    token: ApiToken

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False
    pk = None

    def get_username(self) -> str:
        return f"token:{self.token.name}"

    @property
    def username(self) -> str:
        return self.get_username()


def verify(plaintext: str, now: datetime | None = None) -> ApiToken | None:
    """The live token for ``plaintext`` (not revoked, not expired), or None. No throttle: the
    request-level functions below (``token_principal``) count failures."""
    if not looks_like_token(plaintext):
        return None
    prefix = plaintext[len(TOKEN_PREFIX):].split("_", 1)[0]
    token = ApiToken.objects.select_related("org").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.digest, _digest(plaintext)):
        return None
    now = now or timezone.now()
    if token.revoked is not None or (token.expires is not None and token.expires <= now):
        return None
    # Written at most once a minute: a busy agent must not turn every request into a write.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used__isnull=True) | Q(last_used__lt=now - LAST_USED_EVERY)
    ).update(last_used=now)
    return token


def token_principal(request, plaintext: str, username: str | None = None) -> TokenPrincipal:
    """The principal of a live token presented by ``request``, through the throttle;
    ``BadCredentials`` or ``Throttled`` otherwise."""
    check_throttle(request, username)
    token = verify(plaintext) if "\x00" not in plaintext else None
    if token is None:
        record_failure(request, username)
        raise BadCredentials("Invalid, expired or revoked token.")
    return TokenPrincipal(token)


def bearer_principal(request, value: str) -> TokenPrincipal:
    """``Authorization: Bearer <value>``: the token's principal."""
    return token_principal(request, value.strip())
