"""Activation keys: registering systems without credentials (Candlepin's activation keys).

The key's model and its rules live here; attaching its pools at registration is
``subscriptions.services.apply_key_pools`` (pools belong to the app above this one).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from orgs.models import ActivationKey, ActivationKeyPool, Organization
from orgs.services import require_org
from sam import inputs
from sam.errors import NotFound
from sam.ids import parse_uuid

TEXT_FIELDS = ("description", "service_level", "release_ver", "usage", "role")
MAX_NAME = 255


def keys_by_name(org: Organization, names: list[str]) -> list[ActivationKey]:
    """The org's keys with these names, in the order given (unknown names are skipped)."""
    found = {k.name: k for k in ActivationKey.objects.filter(org=org, name__in=names)
             .prefetch_related("pools")}
    ordered, seen = [], set()
    for name in names:
        if name in found and name not in seen:
            ordered.append(found[name])
            seen.add(name)
    return ordered


def purpose_of(keys: list[ActivationKey]) -> dict:
    """Release and system purpose from keys applied in order (a later key's value wins)."""
    purpose: dict = {}
    for key in keys:
        for model_field, target in (("service_level", "service_level"), ("release_ver", "release_ver"),
                                    ("usage", "usage"), ("role", "role")):
            value = getattr(key, model_field)
            if value:
                purpose[target] = value
    return purpose


def _clean(values: dict) -> dict:
    cleaned = {}
    if "name" in values:
        name = inputs.check_text(str(values["name"] or "").strip(), "name")
        if not name:
            raise ValidationError("name must not be empty.", code="invalid")
        if len(name) > MAX_NAME or "," in name:
            raise ValidationError("name must be at most 255 characters without commas.",
                                  code="invalid")
        cleaned["name"] = name
    for field in TEXT_FIELDS:
        if field in values and values[field] is not None:
            if not isinstance(values[field], str):
                raise ValidationError(f"{field} must be a string.", code="invalid")
            limit = 4000 if field == "description" else 255
            cleaned[field] = inputs.check_text(values[field].strip(), field)[:limit]
    if "auto_attach" in values and values["auto_attach"] is not None:
        if not isinstance(values["auto_attach"], bool):
            raise ValidationError("auto_attach must be true or false.", code="invalid")
        cleaned["auto_attach"] = values["auto_attach"]
    return cleaned


def create_key(org: Organization, name: str, **values) -> ActivationKey:
    require_org(org)
    fields = _clean({"name": name, **values})
    try:
        with transaction.atomic():
            return ActivationKey.objects.create(org=org, **fields)
    except IntegrityError:
        raise ValidationError(f"An activation key named {fields['name']!r} already exists in "
                              f"organization {org.key}.", code="duplicate") from None


def get_key(org: Organization, key_uuid) -> ActivationKey:
    require_org(org)
    key = parse_uuid(key_uuid, "activation key")
    found = ActivationKey.objects.filter(org=org, uuid=key).prefetch_related("pools").first()
    if found is None:
        raise NotFound(f"Activation key {key} does not exist in organization {org.key}.")
    return found


def update_key(key: ActivationKey, **values) -> ActivationKey:
    fields = _clean(values)
    if not fields:
        return key
    try:
        with transaction.atomic():
            ActivationKey.objects.filter(pk=key.pk).update(**fields)
    except IntegrityError:
        raise ValidationError(f"An activation key named {fields.get('name')!r} already exists.",
                              code="duplicate") from None
    key.refresh_from_db()
    return key


def delete_key(key: ActivationKey) -> None:
    key.delete()


def add_pool(key: ActivationKey, pool_uuid, quantity: int | None = None) -> ActivationKeyPool:
    """Record a pool for the key (the pool's existence in the org is checked by the caller)."""
    pool = parse_uuid(pool_uuid, "pool")
    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)
                                 or not 1 <= quantity <= inputs.INT32_MAX):
        raise ValidationError("quantity must be a positive whole number.", code="invalid")
    entry, _ = ActivationKeyPool.objects.update_or_create(key=key, pool_uuid=pool,
                                                          defaults={"quantity": quantity})
    return entry


def remove_pool(key: ActivationKey, pool_uuid) -> None:
    pool = parse_uuid(pool_uuid, "pool")
    deleted, _ = ActivationKeyPool.objects.filter(key=key, pool_uuid=pool).delete()
    if not deleted:
        raise NotFound(f"Pool {pool} is not on activation key {key.name}.")
