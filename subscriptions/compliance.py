"""Stored compliance: the engine's answer per system, kept current wherever entitlements,
installed products or hosts change, so subscription-manager's many compliance calls (35 in one
register-to-unregister flow) are one indexed read each (consumer-api.md "compliance").

``refresh`` is called in the transaction that changed the inputs (grant, revoke, resolution,
pool regeneration, registration and fact updates); ``answer_for`` reads, and computes and
stores on a miss (systems from before this table existed). ``?on_date=`` is computed on demand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from django.utils import timezone

from orgs.models import System
from subscriptions import engine
from subscriptions.catalog import ENTITLEMENT_RELATED, entitlements_of, load_catalog
from subscriptions.models import Entitlement, SystemCompliance


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _ent(ent: Entitlement) -> dict:
    return {"id": str(ent.uuid), "quantity": ent.quantity,
            "pool": {"id": str(ent.pool.uuid), "productId": ent.pool.product.sku}}


def compliant_until(system: System, status: engine.Compliance, ents: list[Entitlement],
                    catalog: engine.Catalog, now: datetime) -> datetime | None:
    """When a valid system stops being valid as its entitlements end (Candlepin's
    ``determineCompliantUntilDate``): the first end of an entitlement providing an installed
    product after which the status is no longer valid. None when not valid now, or when nothing
    that ends changes it (no installed products: rhsmcertd then has nothing to heal)."""
    if status.status != "valid":
        return None
    installed = set(system.installed_product_ids)
    ends = sorted({min(e.end, e.pool.end) for e in ents
                   if engine.active(e, now) and installed & catalog.pool_provides(e.pool)})
    for end in ends:  # an entitlement is no longer active at its end (``engine.active``)
        if engine.compliance(system, ents, catalog, system.org, end).status != "valid":
            return end
    return None


def build_answer(system: System, status: engine.Compliance, ents: list[Entitlement],
                 now: datetime, catalog: engine.Catalog) -> tuple[dict, datetime | None]:
    """Candlepin's ComplianceStatus (every key the client reads) and ``compliantUntil``."""
    compliant, partial, noncompliant, ranges = {}, {}, [], {}
    for pid, product in sorted(status.products.items()):
        if product.status == "valid":
            compliant[pid] = [_ent(e) for e in product.entitlements]
        elif product.status == "partial":
            partial[pid] = [_ent(e) for e in product.entitlements]
        else:
            noncompliant.append(pid)
        if product.entitlements:  # what `list --installed` shows as Starts/Ends
            ranges[pid] = {"startDate": _iso(min(e.start for e in product.entitlements)),
                           "endDate": _iso(max(min(e.end, e.pool.end)
                                               for e in product.entitlements))}
    reasons = []
    for reason in status.reasons:
        attributes = dict(reason.get("attributes") or {})
        attributes.setdefault("name", attributes.get("stack_id") or attributes.get("product_id")
                              or attributes.get("entitlement_id") or "")
        reasons.append({"key": reason["key"], "message": reason["message"],
                        "attributes": attributes})
    until = compliant_until(system, status, ents, catalog, now)
    answer = {
        "status": status.status,
        "compliant": status.status in ("valid", "disabled"),
        "compliantProducts": compliant,
        "partiallyCompliantProducts": partial,
        "partialStacks": {k: [_ent(e) for e in v] for k, v in status.partial_stacks.items()},
        "nonCompliantProducts": noncompliant,
        "compliantUntil": _iso(until),
        "reasons": reasons,
        "productComplianceDateRanges": ranges,
    }
    return answer, until


def compute(system: System, now: datetime | None = None) -> tuple[dict, datetime | None]:
    """The answer for ``system`` at ``now`` (``?on_date=``), not stored."""
    now = now or timezone.now()
    ents = entitlements_of(system)
    catalog = load_catalog(system.org)
    status = engine.compliance(system, ents, catalog, system.org, now)
    return build_answer(system, status, ents, now, catalog)


def refresh(system_ids: Iterable[int], known: Mapping[int, tuple] | None = None,
            catalog: engine.Catalog | None = None) -> None:
    """Recompute and store the compliance of these systems (deleted ones are skipped).

    A fixed number of statements for any number of systems (one catalog per org, the
    entitlements of all of them in one query, one upsert per 500 rows): the set-based
    resolution calls it for whole batches (performance.md P5). ``known``: systems whose
    entitlements the caller holds in memory exactly as they are in this transaction (system id
    → (system, entitlements in ``created`` order)), with ``catalog`` (their org's): not loaded
    again."""
    ids = sorted({int(i) for i in system_ids})
    if not ids:
        return
    now = timezone.now()
    known = known or {}
    entries = [known[i] for i in ids if i in known]
    rest = [i for i in ids if i not in known]
    if rest:
        ents_of: dict[int, list[Entitlement]] = defaultdict(list)
        for ent in (Entitlement.objects.filter(system_id__in=rest)
                    .select_related(*ENTITLEMENT_RELATED).order_by("created", "id")):
            ents_of[ent.system_id].append(ent)
        entries += [(system, ents_of[system.id])
                    for system in System.objects.select_related("org").filter(id__in=rest)]
    catalogs: dict[int, engine.Catalog] = {}
    if catalog is not None and known:
        catalogs[next(iter(known.values()))[0].org_id] = catalog
    rows = []
    for system, ents in entries:
        if system.org_id not in catalogs:
            catalogs[system.org_id] = load_catalog(system.org)
        status = engine.compliance(system, ents, catalogs[system.org_id], system.org, now)
        answer, until = build_answer(system, status, ents, now, catalogs[system.org_id])
        rows.append(SystemCompliance(system_id=system.id, status=answer["status"], answer=answer,
                                     compliant_until=until, computed=now))
    SystemCompliance.objects.bulk_create(
        rows, batch_size=500, update_conflicts=True, unique_fields=["system"],
        update_fields=["status", "answer", "compliant_until", "computed"])


def answer_for(system: System) -> dict:
    """The stored answer (computed and stored when missing), with the request's ``date``."""
    row = SystemCompliance.objects.filter(system_id=system.id).only("answer").first()
    if row is None:
        refresh([system.id])
        row = SystemCompliance.objects.get(system_id=system.id)
    answer = dict(row.answer)
    answer["date"] = _iso(timezone.now())
    return answer
