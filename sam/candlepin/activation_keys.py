"""Candlepin-compatible activation key endpoints (consumer-api.md section 2): org admins (Basic,
or a token as password) manage keys; org viewers may read them. Rules live in
``orgs.activation``; this module translates shapes and errors only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from orgs import activation
from orgs.models import ActivationKey
from orgs.services import has_role_perm
from sam import inputs
from sam.candlepin.http import JSON, ApiRequest, json_response, no_content, timestamp
from sam.candlepin.views import Answer, NotVisible, _org, endpoint
from sam.errors import NotFound
from sam.ids import parse_uuid
from subscriptions.models import Pool

T = TypeVar("T")


def key_json(key: ActivationKey) -> JSON:
    org = key.org
    return {
        "id": str(key.uuid), "name": key.name, "description": key.description,
        "owner": {"id": str(org.pk), "key": org.key, "displayName": org.name,
                  "href": f"/owners/{org.key}"},
        "pools": [{"poolId": str(p.pool_uuid), "quantity": p.quantity} for p in key.pools.all()],
        "autoAttach": key.auto_attach, "serviceLevel": key.service_level or None,
        "releaseVer": {"releaseVer": key.release_ver or None},
        "usage": key.usage or None, "role": key.role or None, "addOns": [],
        "contentOverrides": [], "products": [],
        "created": timestamp(key.created), "updated": timestamp(key.updated),
    }


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = inputs.loads(request.body or b"{}", "The request body", strict=True)
    except ValueError:
        raise Answer(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Answer(400, "The request body must be a JSON object.")
    values: dict[str, Any] = {}
    mapping = {"name": "name", "description": "description", "autoAttach": "auto_attach",
               "serviceLevel": "service_level", "usage": "usage", "role": "role"}
    for wire, field in mapping.items():
        if wire in data:
            values[field] = data[wire]
    if "releaseVer" in data:
        release = data["releaseVer"]
        values["release_ver"] = release.get("releaseVer") if isinstance(release, dict) else release
        values["release_ver"] = values["release_ver"] or ""
    for field in ("service_level", "usage", "role", "description"):
        if field in values and values[field] is None:
            values[field] = ""
    return values


def _checked(call: Callable[[], T]) -> T:
    try:
        return call()
    except NotFound as exc:
        raise NotVisible(exc.messages[0]) from None
    except ValidationError as exc:
        raise Answer(400, " ".join(exc.messages)) from None


@endpoint("GET", "POST")
def owner_keys(request: ApiRequest, key: str) -> HttpResponse:
    if request.method == "GET":
        org = _org(request, key, "view_org")
        keys = ActivationKey.objects.filter(org=org).select_related("org").prefetch_related("pools")
        name = request.GET.get("name")
        if name:
            keys = keys.filter(name=name)
        return json_response(request, [key_json(k) for k in keys])
    org = _org(request, key, "view_org")
    if not has_role_perm(request.api_user, "admin_org", org):
        raise Answer(403, "Insufficient permissions")
    values = _body(request)
    name = values.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise Answer(400, "Activation key name must not be empty.")
    created = _checked(lambda: activation.create_key(org, name, **values))
    return json_response(request, key_json(created))


def _key(request: ApiRequest, key_id: str, perm: str) -> ActivationKey:
    try:
        uuid = parse_uuid(key_id)
    except ValidationError:
        raise NotVisible(f"ActivationKey with id {key_id} could not be found.") from None
    found = ActivationKey.objects.select_related("org").filter(uuid=uuid).first()
    if found is None or not has_role_perm(request.api_user, "view_org", found.org):
        raise NotVisible(f"ActivationKey with id {key_id} could not be found.")
    if not has_role_perm(request.api_user, perm, found.org):
        raise Answer(403, "Insufficient permissions")
    return found


@endpoint("GET", "PUT", "DELETE")
def key_detail(request: ApiRequest, key_id: str) -> HttpResponse:
    if request.method == "GET":
        return json_response(request, key_json(_key(request, key_id, "view_org")))
    found = _key(request, key_id, "admin_org")
    if request.method == "DELETE":
        activation.delete_key(found)
        return no_content(request)
    values = _body(request)
    updated = _checked(lambda: activation.update_key(found, **values))
    return json_response(request, key_json(updated))


@endpoint("POST", "DELETE")
def key_pool(request: ApiRequest, key_id: str, pool_id: str) -> HttpResponse:
    found = _key(request, key_id, "admin_org")
    try:
        pool_uuid = parse_uuid(pool_id)
    except ValidationError:
        raise NotVisible(f"Pool with id {pool_id} could not be found.") from None
    if request.method == "DELETE":
        _checked(lambda: activation.remove_pool(found, pool_uuid))
        return json_response(request, key_json(ActivationKey.objects.get(pk=found.pk)))
    if not Pool.objects.filter(org=found.org, uuid=pool_uuid).exists():
        raise NotVisible(f"Pool with id {pool_id} could not be found.")
    quantity = None
    if request.GET.get("quantity"):
        try:
            quantity = inputs.int_param(request.GET, "quantity", 1)
        except inputs.BadInput as exc:
            raise Answer(400, " ".join(exc.messages)) from None
    _checked(lambda: activation.add_pool(found, pool_uuid, quantity))
    return json_response(request, key_json(ActivationKey.objects.get(pk=found.pk)))
