"""The one place that makes public ids, and the identity rules of domain.md section 2."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def parse_uuid(value, field: str = "uuid") -> uuid.UUID:
    """A UUID from user input, or a ``ValidationError`` naming the field."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except (TypeError, ValueError, AttributeError):
        raise ValidationError(
            f"{field}: {value!r} is not a valid UUID.", code="invalid_uuid"
        ) from None


def normalize_guest_uuid(value) -> str:
    """Hypervisor ids and guest UUIDs compare case-insensitively: store them lower-cased."""
    return str(value).strip().lower()


def swapped_uuid(value: str) -> str | None:
    """The form with the first three groups byte-swapped (SMBIOS endianness), or None.

    Some hypervisors report a guest's SMBIOS UUID that way; the host lookup tries both forms.
    """
    text = normalize_guest_uuid(value)
    parts = text.split("-")
    if len(parts) != 5 or [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return None
    try:
        int(text.replace("-", ""), 16)
    except ValueError:
        return None

    def swap(group: str) -> str:
        return "".join(reversed([group[i:i + 2] for i in range(0, len(group), 2)]))

    return "-".join([swap(parts[0]), swap(parts[1]), swap(parts[2]), parts[3], parts[4]])
