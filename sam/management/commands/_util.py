"""Shared helpers of sam's management commands."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError


def command_error(exc: ValidationError) -> CommandError:
    """A service's ``ValidationError`` as a ``CommandError`` carrying its plain messages."""
    return CommandError(" ".join(str(m) for m in exc.messages))
