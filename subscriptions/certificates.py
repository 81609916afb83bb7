"""Entitlement certificates: one v3 certificate per entitlement of a registered consumer
(consumer-api.md "certificates", rhsm-wire.md 4.2), kept in step with the entitlements.

``sync`` runs in the transaction that changed the entitlements (beside the stored compliance):
an entitlement without a certificate, or whose dates, quantity or pool differ from what its
certificate states, gets a new one with a new serial; removed entitlements take theirs along
(cascade). Certificates are never made when fetched. Systems without a consumer identity
(virt-who hypervisors, API-registered systems) have no key pair and get none.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping

from django.utils import timezone

from orgs import consumers, content_access
from orgs.models import ConsumerIdentity
from sam import pki
from subscriptions import engine
from subscriptions.catalog import LoadedCatalog
from subscriptions.models import Entitlement, EntitlementCertificate, Product


def _iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


def _products(product: Product) -> list[dict]:
    """The engineering products the entitlement grants (derived products for host-derived
    pools: ``pool.product`` already is the derived product there); the SKU itself when it
    provides none. ``product`` with its provided products loaded."""
    provided = sorted(product.provided_products.all(), key=lambda p: p.sku) or [product]
    return [{"id": p.sku, "name": p.name, "version": str((p.attributes or {}).get("version", "")),
             "architectures": [a for a in str((p.attributes or {}).get("arch", "")).split(",") if a],
             "brand_type": "", "brand_name": "", "content": []} for p in provided]


def payload(ent: Entitlement, consumer_uuid: str, products: list[dict] | None = None) -> dict:
    """The certificate's JSON (what ``rhsm.certificate2`` reads for order, products, pool)."""
    pool = ent.pool
    product = pool.product
    subscription = pool.subscription
    attrs = product.attributes or {}
    sub = {"sku": product.sku, "name": product.name, "warning": 0,
           "virt_only": pool.virt_only, "management": engine.is_true(attrs.get("management_enabled")),
           "service": {"level": str(attrs.get("support_level", "")),
                       "type": str(attrs.get("support_type", ""))}}
    stack = engine.stacking_id(product)
    if stack:
        sub["stacking_id"] = stack
    sockets = engine.int_attr(product, "sockets", 0)
    if sockets:
        sub["sockets"] = sockets
    return {
        "consumer": consumer_uuid, "quantity": ent.quantity, "subscription": sub,
        "order": {"number": subscription.order_number, "quantity": pool.quantity,
                  "start": _iso(pool.start), "end": _iso(pool.end),
                  "contract": subscription.contract_number, "account": subscription.account_number},
        "products": products if products is not None else _products(product),
        "pool": {"id": str(pool.uuid)},
    }


def _stale(cert: tuple | None, ent: Entitlement) -> bool:
    return cert != (ent.pool_id, ent.quantity, ent.start, ent.end)


def sync(system_ids: Iterable[int], regenerate: bool = False,
         known: Mapping[int, tuple] | None = None, catalog: LoadedCatalog | None = None) -> int:
    """Issue what is missing or stale for these systems' entitlements (all of them with
    ``regenerate``: ``PUT /consumers/{uuid}/certificates``); returns how many were issued.

    Three or four queries and one upsert whatever the number of systems, plus two signatures
    per certificate issued. ``known``: systems whose entitlements the caller holds in memory
    exactly as they are in this transaction (system id → (system, entitlements with their pools,
    products and subscriptions)), with ``catalog`` for the products they provide: set-based
    resolution hands over what it just decided instead of loading it again (performance.md P5)."""
    ids = sorted({int(i) for i in system_ids})
    if not ids:
        return 0
    consumers_of = ConsumerIdentity.objects.filter(system_id__in=ids)
    identities = {i.system_id: i for i in consumers_of
                  .exclude(content_access.sca_q("system__"))  # SCA: accounting, no certificate
                  .select_related("system__org")
                  .only("system_id", "sealed_key", "system__uuid", "system__org__key")}
    if not identities:
        return 0
    known = known or {}
    ents = [e for system_id in identities if system_id in known for e in known[system_id][1]]
    rest = [system_id for system_id in identities if system_id not in known]
    if rest:
        ents += list(Entitlement.objects.filter(system_id__in=rest)
                     .select_related("pool__product", "pool__subscription")
                     .prefetch_related("pool__product__provided_products"))
    current = {row[0]: row[1:] for row in EntitlementCertificate.objects.filter(
        system_id__in=list(identities)).values_list("entitlement_id", "pool_id", "quantity",
                                                    "start", "end")}
    todo = [e for e in ents if regenerate or _stale(current.get(e.id), e)]
    if not todo:
        return 0
    keys: dict[str, object] = {}
    products: dict[int, list[dict]] = {}
    now = timezone.now()
    rows = []
    for ent in todo:
        identity = identities[ent.system_id]
        if identity.sealed_key not in keys:
            keys[identity.sealed_key] = consumers.public_key(identity)
        product_id = ent.pool.product_id
        if product_id not in products:  # one product list per product, not per entitlement
            product = catalog.by_id.get(product_id) if catalog is not None else None
            products[product_id] = _products(product or ent.pool.product)
        system = identity.system
        data = zlib.compress(json.dumps(payload(ent, str(system.uuid), products[product_id]),
                                        separators=(",", ":")).encode("utf-8"))
        serial = pki.new_serial()
        cert = pki.issue_entitlement(system.org.key, str(ent.uuid), keys[identity.sealed_key],
                                     serial, ent.start, ent.end, data)
        rows.append(EntitlementCertificate(
            entitlement_id=ent.id, system_id=ent.system_id, serial=serial, cert_pem=cert,
            pool_id=ent.pool_id, quantity=ent.quantity, start=ent.start, end=ent.end, issued=now))
    EntitlementCertificate.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["entitlement"],
        update_fields=["serial", "cert_pem", "pool_id", "quantity", "start", "end", "issued"])
    return len(rows)
