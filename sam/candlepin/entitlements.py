"""Pools and entitlements on the Candlepin wire (rhsm-wire.md 2.4, 2.6, 2.10): what
``list --available``, ``attach``, ``remove`` and rhsmcertd's auto-heal send.

A wire adapter: which pools a consumer may see and take is decided by the engine's
pre-entitlement checks (``subscriptions.services.pools_for_consumer``, ``attach``), auto-attach
is the engine's own resolution (``resolve_system``), removal ``remove_own_entitlements``; this
module reads the query, authenticates, and answers Candlepin's shapes and refusals.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import prefetch_related_objects
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from orgs import consumers, content_access
from orgs.auth import basic_principal
from orgs.certauth import consumer_principal
from orgs.models import ConsumerIdentity, Organization, System
from orgs.services import has_role_perm
from sam import inputs
from sam.candlepin.consumers import Principal, Refused, _answer_errors, _methods, consumer_endpoint
from sam.candlepin.http import (
    JSON,
    ApiRequest,
    json_response,
    no_content,
    query_bool,
    request_uuid,
    timestamp,
)
from sam.errors import EntitlementRefused
from sam.ids import parse_uuid
from subscriptions import certificates as entitlement_certificates
from subscriptions import engine
from subscriptions import services as subscriptions
from subscriptions.models import UNLIMITED, Entitlement, EntitlementCertificate, Pool, Product

POOL_RELATED = ("product", "subscription__product", "subscription__derived_product",
                "requires_host", "org")


# --- Shapes --------------------------------------------------------------------------------------

def _pairs(attributes: dict[str, Any] | None) -> list[JSON]:
    return [{"name": str(k), "value": str(v)} for k, v in sorted((attributes or {}).items())]


def _provided(product: Product) -> list[JSON]:
    return [{"productId": p.sku, "productName": p.name}
            for p in sorted(product.provided_products.all(), key=lambda p: p.sku)]


def calculated_attributes(pool: Pool, system: System | None) -> JSON:
    """What the client reads besides the pool: ``compliance_type`` ("Stackable" shows in
    ``list --consumed``) and ``suggested_quantity`` (units to cover the system's sockets)."""
    stack = engine.stacking_id(pool.product)
    suggested = 1
    if system is not None and pool.multi_entitlement and stack and not system.is_guest:
        suggested = engine.units_for_stack(system, pool.product, 0)
        if pool.quantity != UNLIMITED:
            suggested = max(1, min(suggested, pool.quantity - pool.consumed))
    return {"compliance_type": "Stackable" if stack else "Standard",
            "suggested_quantity": str(suggested), "quantity_increment": "1"}


def pool_json(pool: Pool, system: System | None = None) -> JSON:
    """PoolDTO with every field ``list --available`` and ``attach --pool`` read (2.6)."""
    subscription = pool.subscription
    derived = subscription.derived_product if pool.type in (Pool.Type.NORMAL, Pool.Type.BONUS) else None
    attributes = dict(pool.attributes or {})
    if pool.virt_only:
        attributes.setdefault("virt_only", "true")
    if pool.physical_only:
        attributes.setdefault("physical_only", "true")
    if pool.multi_entitlement:
        attributes.setdefault("multi-entitlement", "yes")
    stack = engine.stacking_id(pool.product)
    org = pool.org
    return {
        "id": str(pool.uuid), "type": pool.type,
        "owner": {"key": org.key, "displayName": org.name, "href": f"/owners/{org.key}"},
        "productId": pool.product.sku, "productName": pool.product.name,
        "providedProducts": _provided(pool.product),
        "derivedProductId": derived.sku if derived else None,
        "derivedProductName": derived.name if derived else None,
        "derivedProvidedProducts": _provided(derived) if derived else [],
        "quantity": pool.quantity, "consumed": pool.consumed, "exported": 0,
        "startDate": timestamp(pool.start), "endDate": timestamp(pool.end),
        "contractNumber": subscription.contract_number or None,
        "accountNumber": subscription.account_number or None,
        "orderNumber": subscription.order_number or None,
        "subscriptionId": str(subscription.uuid),
        "attributes": _pairs(attributes),
        "productAttributes": _pairs(pool.product.attributes),
        "calculatedAttributes": calculated_attributes(pool, system),
        "stacked": stack is not None, "stackId": stack,
        "sourceStackId": pool.source_stack_id,
        "sourceEntitlement": ({"id": str(pool.source_entitlement.uuid)}
                              if pool.source_entitlement_id and pool.source_entitlement else None),
        "activeSubscription": True, "developmentPool": False,
        "href": f"/pools/{pool.uuid}",
        "created": timestamp(pool.created), "updated": timestamp(pool.updated),
    }


def serial_json(cert: EntitlementCertificate) -> JSON:
    return {"id": cert.serial, "serial": cert.serial, "revoked": False, "collected": False,
            "expiration": timestamp(cert.end), "created": timestamp(cert.issued),
            "updated": timestamp(cert.issued)}


def certificate_json(cert: EntitlementCertificate, key: str | None, with_cert: bool = True) -> JSON:
    """CertificateDTO: ``cert`` (the v3 bundle) and ``key`` (the consumer's own key)."""
    answer: JSON = {"id": str(cert.serial), "serial": serial_json(cert),
              "created": timestamp(cert.issued), "updated": timestamp(cert.issued)}
    if with_cert:
        answer["cert"] = cert.cert_pem
    if key is not None:
        answer["key"] = key
    return answer


def entitlement_json(ent: Entitlement, system: System, certificates: list[JSON] | None = None) -> JSON:
    return {
        "id": str(ent.uuid), "quantity": ent.quantity,
        "startDate": timestamp(ent.start), "endDate": timestamp(ent.end),
        "pool": pool_json(ent.pool, system),
        "consumer": {"uuid": str(system.uuid), "name": system.name,
                     "href": f"/consumers/{system.uuid}"},
        "certificates": certificates or [],
        "href": f"/entitlements/{ent.uuid}",
        "created": timestamp(ent.created), "updated": timestamp(ent.created),
    }


def _consumer_key(system: System) -> str | None:
    identity = ConsumerIdentity.objects.filter(system=system).first()
    return consumers.key_pem(identity) if identity else None


def _entitlements(system: System, ids: Iterable[int] | None = None,
                  excluded: Collection[str] = frozenset()) -> list[JSON]:
    """EntitlementDTOs with their certificates (``exclude=certificates.key``/``.cert`` as the
    client asks for ``list --consumed``)."""
    query = Entitlement.objects.filter(system=system)
    if ids is not None:
        query = query.filter(id__in=ids)
    rows = list(query.select_related(*(f"pool__{r}" for r in POOL_RELATED), "pool__source_entitlement")
                .prefetch_related("pool__product__provided_products",
                                  "pool__subscription__derived_product__provided_products")
                .order_by("created", "id"))
    certs = {c.entitlement_id: c for c in
             EntitlementCertificate.objects.filter(entitlement__in=[e.id for e in rows])}
    key = None if "certificates.key" in excluded or not certs else _consumer_key(system)
    with_cert = "certificates.cert" not in excluded
    return [entitlement_json(e, system, [certificate_json(certs[e.id], key, with_cert)]
                             if e.id in certs else [])
            for e in rows]


# --- Query parameters ----------------------------------------------------------------------------

def _date_param(request: HttpRequest, name: str) -> datetime | None:
    """An ISO-8601 moment as the client sends it (``isoformat()`` quote_plus'd: a ``+`` of the
    offset may arrive as a space)."""
    raw = request.GET.get(name)
    if raw is None or not raw.strip():
        return None
    text = raw.strip().replace(" ", "+")
    moment = parse_datetime(text)
    if moment is None:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
    if moment is None:
        raise Refused(400, f"{name} {raw!r} is not an ISO-8601 date and time.")
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    try:
        return inputs.check_datetime(moment, name)
    except Exception:
        raise Refused(400, f"{name} {raw!r} is out of range.") from None


def _matches(pool: Pool, pattern: str) -> bool:
    """Candlepin's ``matches``: case-insensitive, ``*``/``?`` wildcards, against the pool's
    product and provided products (name and id) and its contract and order numbers."""
    wanted = f"*{pattern.lower()}*"
    subscription = pool.subscription
    values = [pool.product.sku, pool.product.name, subscription.contract_number,
              subscription.order_number]
    for product in pool.product.provided_products.all():
        values += [product.sku, product.name]
    return any(v and fnmatch.fnmatchcase(v.lower(), wanted) for v in values)


# --- GET /owners/{key}/pools ---------------------------------------------------------------------

def _pool_reader(request: HttpRequest, key: str,
                 consumer_uuid: str | None) -> tuple[Organization, System | None]:
    """The org and consumer of a pool listing: a consumer reads its own org's pools (for
    itself), an org member (Basic) any system's of an org it sees."""
    principal = consumer_principal(request)
    if principal is not None:
        system = principal.system
        if system.org.key != key:
            raise Refused(403, "Insufficient permissions")
        if consumer_uuid and consumer_uuid != str(system.uuid):
            raise Refused(403, "Insufficient permissions")
        return system.org, system
    user = basic_principal(request)
    org = Organization.objects.filter(key=key).first()
    if org is None or not has_role_perm(user, "view_org", org):
        raise Refused(404, f"Organization with id {key} could not be found.")
    if not consumer_uuid:
        return org, None
    try:
        system_key = parse_uuid(consumer_uuid)
    except Exception:
        system_key = None
    found = (System.objects.select_related("org", "current_host")
             .filter(org=org, uuid=system_key).first() if system_key else None)
    if found is None:
        raise Refused(404, f"Unit with ID '{consumer_uuid}' could not be found.")
    return org, found


@csrf_exempt
def owner_pools(request: HttpRequest, key: str) -> HttpResponse:
    """``GET /owners/{key}/pools[?consumer=&listall=&matches=&activeon=]``."""

    def call() -> HttpResponse:
        _methods(request, ("GET",))
        org, system = _pool_reader(request, key, request.GET.get("consumer", "").strip() or None)
        list_all = query_bool(request, "listall", False)
        if list_all is None:
            raise Refused(400, "listall must be true or false.")
        on = _date_param(request, "activeon") or timezone.now()
        if system is not None:
            pools = subscriptions.pools_for_consumer(system, on, list_all=list_all)
        else:
            pools = list(subscriptions.org_pools(org).filter(end__gt=on, start__lte=on))
        prefetch_related_objects(pools, "product__provided_products",
                                 "subscription__derived_product__provided_products", "org",
                                 "source_entitlement")
        pattern = request.GET.get("matches", "").strip()
        if pattern:
            pools = [p for p in pools if _matches(p, pattern)]
        return json_response(request, [pool_json(p, system) for p in pools])

    return _answer_errors(request, call)


# --- /consumers/{uuid}/entitlements ----------------------------------------------------------

# Candlepin's rule messages, which the client prints after "Unable to attach: " style prefixes.
REFUSED = {
    "already_entitled": "This unit has already had the subscription matching pool ID '{pool}' attached.",
    "pool_exhausted": "No subscriptions are available from the pool with ID '{pool}'.",
    "virt_only": "Pool is restricted to virtual guests: '{pool}'.",
    "physical_only": "Pool is restricted to physical systems: '{pool}'.",
    "host_mismatch": "Guest's host does not match owner of pool: '{pool}'.",
    "unmapped_has_host": "Pool '{pool}' is restricted to unmapped virtual guests.",
    "unmapped_window_passed": "Pool '{pool}' is restricted to virtual guests in their first day "
                              "of existence.",
    "multi_entitlement_unsupported": "Multi-entitlement not supported for pool with ID '{pool}'.",
    "pool_expired": "Subscriptions for {sku} expired on: {end}.",
    "pool_not_started": "Subscriptions for {sku} start on: {start}.",
}


def _refusal(request: HttpRequest, exc: EntitlementRefused, pool_uuid: str) -> HttpResponse:
    pool = Pool.objects.select_related("product").filter(uuid=parse_uuid(pool_uuid)).first()
    template = REFUSED.get(exc.reason)
    if template is None or pool is None:
        message = exc.message
    else:
        message = template.format(pool=pool_uuid, sku=pool.product.sku,
                                  end=pool.end.date().isoformat(), start=pool.start.date().isoformat())
    body = {"displayMessage": message, "requestUuid": request_uuid(request), "reason": exc.reason}
    return json_response(request, body, status=403)


def _quantity(request: HttpRequest) -> int:
    raw = request.GET.get("quantity", "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= subscriptions.MAX_QUANTITY:
        raise Refused(400, f"Quantity must be a positive whole number, not {raw!r}.")
    return value


@consumer_endpoint("GET", "POST", "DELETE")
def entitlements(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    if request.method == "GET":
        return json_response(request, _entitlements(system,
                                                    excluded=frozenset(request.GET.getlist("exclude"))))
    if request.method == "DELETE":  # remove --all
        removed = subscriptions.remove_own_entitlements(system)
        return json_response(request, {"deletedRecords": removed})
    pool_uuid = request.GET.get("pool", "").strip()
    if content_access.is_sca(system):  # Candlepin's answers; sam attaches by itself
        if pool_uuid:
            raise Refused(400, "Ignoring the request to attach. Attaching subscriptions is "
                               f'disabled for organization "{system.org.key}" because Simple '
                               "Content Access (SCA) is enabled.")
        raise Refused(400, f'Ignoring request to auto-attach. It is disabled for org '
                           f'"{system.org.key}" because of the content access mode setting.')
    if pool_uuid:  # attach --pool P [--quantity N]
        try:
            parse_uuid(pool_uuid)
        except Exception:
            raise Refused(404, f"Pool with id {pool_uuid} could not be found.") from None
        quantity = _quantity(request)
        try:
            ent = subscriptions.attach(system.org, system.uuid, pool_uuid, quantity,
                                       trigger="consumer")
        except EntitlementRefused as exc:
            return _refusal(request, exc, pool_uuid)
        return json_response(request, _entitlements(system, [ent.id]))
    # attach --auto, or rhsmcertd's auto-heal for a date
    on = _date_param(request, "entitle_date")
    if not system.org.autobind_enabled:
        raise Refused(400, f'Ignoring request to auto-attach. It is disabled for org "{system.org.key}".')
    result = subscriptions.resolve_system(system.id, "consumer_auto_attach", on=on, requested=True)
    ids = result.entitlement_ids if result else ()
    return json_response(request, _entitlements(system, ids) if ids else [])


def _remove_own(system: System, missing: str, **which: str) -> None:
    """Remove the consumer's own entitlements picked by ``which`` (an entitlement or a pool
    uuid); 404 with Candlepin's ``missing`` text when the id is malformed or matches none."""
    try:
        parse_uuid(next(iter(which.values())))
    except Exception:
        raise Refused(404, missing) from None
    if not subscriptions.remove_own_entitlements(system, **which):
        raise Refused(404, missing)


@consumer_endpoint("DELETE")
def entitlement(request: ApiRequest, system: System, principal: Principal,
                entitlement_id: str) -> HttpResponse:
    """``DELETE /consumers/{uuid}/entitlements/{id}``: one of its own entitlements."""
    _remove_own(system, f"Entitlement with ID '{entitlement_id}' could not be found.",
                entitlement_uuid=entitlement_id)
    return no_content(request)


@consumer_endpoint("DELETE")
def entitlements_of_pool(request: ApiRequest, system: System, principal: Principal,
                         pool_id: str) -> HttpResponse:
    """``DELETE /consumers/{uuid}/entitlements/pool/{id}`` (``remove --pool``)."""
    _remove_own(system, f"No entitlements for consumer '{system.uuid}' with pool id '{pool_id}'",
                pool_uuid=pool_id)
    return no_content(request)


# --- /consumers/{uuid}/certificates --------------------------------------------------------------

def _serials(request: HttpRequest) -> set[int] | None:
    raw = request.GET.get("serials")
    if raw is None:
        return None
    serials: set[int] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > inputs.INT64_MAX:
            raise Refused(400, f"Serial {part!r} is not a certificate serial number.")
        serials.add(int(part))
    return serials


@consumer_endpoint("GET", "PUT")
def certificates(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    """``GET ...?serials=a,b`` the entitlement certificates (with the consumer's key);
    ``PUT`` (``refresh --force``) re-issues all of them with new serials."""
    if request.method == "PUT":
        with transaction.atomic():
            subscriptions.lock_system(system)
            entitlement_certificates.sync([system.id], regenerate=True)
        return json_response(request, [])
    rows = _held_certificates(system)
    wanted = _serials(request)
    if wanted is not None:
        rows = [c for c in rows if c.serial in wanted]
    key = _consumer_key(system) if rows else None
    return json_response(request, [certificate_json(c, key) for c in rows])


def _sca_row(system: System) -> EntitlementCertificate | None:
    """The SCA content certificate in the shape of an entitlement certificate row."""
    cert = content_access.certificate_of(system)
    if cert is None:
        return None
    return EntitlementCertificate(serial=cert.serial, cert_pem=cert.cert_pem, end=cert.not_after,
                                  issued=cert.issued)


def _held_certificates(system: System) -> list[EntitlementCertificate]:
    """What the consumer holds: its SCA certificate when shown SCA (never entitlement
    certificates then), else its entitlement certificates."""
    sca = _sca_row(system)
    if sca is not None:
        return [sca]
    return list(EntitlementCertificate.objects.filter(system=system).order_by("serial"))


@consumer_endpoint("GET")
def certificate_serials(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    """What rhsmcertd compares with its local certificates every 4 hours: one indexed read."""
    sca = _sca_row(system)
    if sca is not None:
        return json_response(request, [serial_json(sca)])
    rows = (EntitlementCertificate.objects.filter(system=system).order_by("serial")
            .only("serial", "end", "issued"))
    return json_response(request, [serial_json(c) for c in rows])


@consumer_endpoint("DELETE")
def certificate(request: ApiRequest, system: System, principal: Principal, serial: str) -> HttpResponse:
    """``DELETE /consumers/{uuid}/certificates/{serial}`` (``remove --serial``): the
    entitlement of that certificate goes."""
    if not serial.isdigit() or int(serial) > inputs.INT64_MAX:
        raise Refused(404, f"Entitlement Certificate with serial number '{serial}' could not be found.")
    cert = (EntitlementCertificate.objects.filter(system=system, serial=int(serial))
            .select_related("entitlement").first())
    if cert is None or not subscriptions.remove_own_entitlements(
            system, entitlement_uuid=cert.entitlement.uuid):
        raise Refused(404, f"Entitlement Certificate with serial number '{serial}' could not be found.")
    return no_content(request)
