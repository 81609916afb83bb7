"""Errors the services raise. Views turn them into 4xx answers; nothing here is a 5xx."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class NotFound(ValidationError):
    """An object does not exist in the given org (or is not visible there): a 404 in views."""

    def __init__(self, message: str):
        super().__init__(message, code="not_found")


class EntitlementRefused(Exception):
    """A pre-entitlement check failed; ``reason`` is a stable key (domain.md section 4)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ConfirmationRequired(Exception):
    """A membership change would revoke API tokens: the caller confirms after seeing ``tokens``
    (the API answers 409 until ``confirm=true``, the web UI shows a confirmation page)."""

    def __init__(self, message: str, tokens: list):
        super().__init__(message)
        self.message = message
        self.tokens = tokens
