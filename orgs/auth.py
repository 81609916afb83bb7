"""Hashed API tokens and the principal a token authenticates as.

Format ``sam_<prefix>_<secret>``: the prefix finds the row by index, an HMAC-SHA256 of the whole
token (keyed with ``SECRET_KEY``) is compared in constant time. Rotating ``SECRET_KEY``
invalidates every token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from orgs.models import ApiToken

TOKEN_PREFIX = "sam_"
LAST_USED_EVERY = timedelta(minutes=1)


def _digest(plaintext: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), plaintext.encode(), hashlib.sha256).hexdigest()


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
    """The live token for ``plaintext`` (not revoked, not expired), or None."""
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
