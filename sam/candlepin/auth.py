"""HTTP Basic authentication for the Candlepin-compatible API.

Password hashes are deliberately slow (PBKDF2), and virt-who authenticates every request, so a
verified (user, password) pair is remembered in this process for a few minutes, keyed by an
HMAC that never holds the password itself. A changed password or deactivated user misses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model

from orgs.auth import TokenPrincipal, looks_like_token, verify

CACHE_SECONDS = 300
CACHE_SIZE = 2048
_cache: OrderedDict[bytes, tuple[int, str, float]] = OrderedDict()
_lock = threading.Lock()


class BadCredentials(Exception):
    """Missing, malformed or wrong credentials: 401."""


def parse_basic(header: str | None) -> tuple[str, str]:
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
    if not sep or not username:
        raise BadCredentials("Malformed Basic authorization header.")
    return username, password


def _key(username: str, password: str) -> bytes:
    return hmac.new(settings.SECRET_KEY.encode(), f"{username}\0{password}".encode(),
                    hashlib.sha256).digest()


def basic_user(request):
    """The active user named by the request's Basic credentials; ``BadCredentials`` if none.

    An API token is accepted as the password (any username), so a virt-who configuration never
    holds a person's password; the request then acts with the token's org and role only.
    """
    username, password = parse_basic(request.META.get("HTTP_AUTHORIZATION"))
    if looks_like_token(password):
        token = verify(password)
        if token is None:
            raise BadCredentials("Invalid, expired or revoked token.")
        return TokenPrincipal(token)
    key = _key(username, password)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
    if hit and hit[2] > now:
        user = get_user_model().objects.filter(pk=hit[0], is_active=True).first()
        if user is not None and user.password == hit[1]:
            return user
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        raise BadCredentials("Invalid username or password.")
    with _lock:
        _cache[key] = (user.pk, user.password, now + CACHE_SECONDS)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return user
