"""Importing a manifest: conflicts, subscriptions and pools, re-import, delete, history.

Order as Candlepin's importer (manifest.md sections 3, 5-7): the signature is checked before
anything inside is parsed and, failing, is reported alone; then, with the org's row locked,
MANIFEST_OLD / MANIFEST_SAME / DISTRIBUTOR_CONFLICT are collected and reported together, each
overridable by name; a distributor another org uses is refused outright. A clean (or forced)
import reconciles the org's manifest subscriptions in one transaction: one subscription per
upstream entitlement, matched by upstream entitlement id (else upstream pool), updated in
place, created, or deleted when it vanished or ended; pools as the engine builds them;
systems re-resolved once, after commit. Every outcome but an unreadable file is recorded in
the org's import history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.models import Organization
from sam.task_slots import TaskSlot
from subscriptions import services
from subscriptions.manifest import reader, signature
from subscriptions.manifest.reader import InvalidManifest, Manifest
from subscriptions.models import (
    Entitlement,
    ManifestImport,
    Product,
    Subscription,
    UpstreamDistributor,
)

log = logging.getLogger(__name__)

TRIGGER = "manifest"
SIGNATURE_CONFLICT = "SIGNATURE_CONFLICT"
MANIFEST_OLD = "MANIFEST_OLD"
MANIFEST_SAME = "MANIFEST_SAME"
DISTRIBUTOR_CONFLICT = "DISTRIBUTOR_CONFLICT"
CONFLICTS = {
    SIGNATURE_CONFLICT: "Archive failed signature check.",
    MANIFEST_OLD: "Import is older than existing data.",
    MANIFEST_SAME: "Import is the same as existing data.",
    DISTRIBUTOR_CONFLICT: "Owner has already imported from another subscription management application.",
}
CONFLICT_KEYS = list(CONFLICTS)
HISTORY_KEPT = 100  # newest import records kept per org

__all__ = ["CONFLICTS", "InvalidManifest", "ManifestConflict", "ManifestRefused", "NoManifest",
           "accept", "delete_manifest", "import_manifest", "parse_force", "run_job"]


class ManifestConflict(Exception):
    """Conflicts not forced (409): ``record`` is the FAILURE entry of the history."""

    def __init__(self, record: ManifestImport):
        keys = [c["key"] for c in record.conflicts if not c["forced"]]
        super().__init__(record.message)
        self.record = record
        self.keys = keys


class ManifestRefused(Exception):
    """Refused whatever is forced (409): the distributor belongs to another org."""

    def __init__(self, record: ManifestImport):
        super().__init__(record.message)
        self.record = record


class NoManifest(Exception):
    """The org has no imported manifest (404)."""


def parse_force(values: Iterable[str]) -> frozenset[str]:
    """Conflict names to override: repeatable, comma-separated allowed; ``true`` means
    MANIFEST_OLD and ``false`` nothing (Candlepin's legacy values); unknown names are a 400."""
    names: set[str] = set()
    for value in values:
        for item in str(value).split(","):
            item = item.strip()
            if not item or item.lower() == "false":
                continue
            if item.lower() == "true":
                names.add(MANIFEST_OLD)
            elif item.upper() in CONFLICTS:
                names.add(item.upper())
            else:
                raise ValidationError(
                    f"force: {item[:60]!r} is not a conflict name; use {', '.join(CONFLICTS)}.",
                    code="invalid_force")
    return frozenset(names)


def _plain(text: str, limit: int = 255) -> str:
    """A client-given name (file name, user) safe to store: no NUL, no lone surrogate."""
    return str(text or "").replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def _conflict(key: str, forced: bool, message: str | None = None) -> dict:
    return {"key": key, "message": message or CONFLICTS[key], "forced": forced}


# --- Reading and checking the upload (no database write) --------------------------------------

@dataclass
class Upload:
    archive: reader.Archive
    check: signature.Check
    manifest: Manifest | None  # None when the signature failed and was not forced


def read_upload(data: bytes, force: frozenset[str]) -> Upload:
    """Open the zip, check the signature, then (if it passed or was forced) parse the data.

    Raises ``InvalidManifest`` for anything unreadable or unexpected; stores nothing."""
    archive = reader.open_archive(data, settings.SAM_MANIFEST_MAX_BYTES)
    check = signature.verify(archive.export, archive.signature)
    if not check.valid and SIGNATURE_CONFLICT not in force:
        return Upload(archive, check, None)
    return Upload(archive, check, reader.parse_export(archive.export))


def _record(org: Organization, upload: Upload, force: frozenset[str], file_name: str,
            principal: str) -> ManifestImport:
    """An unsaved history entry for this upload (signature verdict, file facts)."""
    record = ManifestImport(
        org=org, kind=ManifestImport.Kind.IMPORT, file_name=_plain(file_name),
        file_sha256=upload.archive.sha256, file_size=upload.archive.size, principal=_plain(principal),
        forced=sorted(force), signature=upload.check.status, signer=upload.check.signer)
    if not upload.check.valid:
        record.conflicts = [_conflict(SIGNATURE_CONFLICT, SIGNATURE_CONFLICT in force, upload.check.message)]
    manifest = upload.manifest
    if manifest is not None:
        record.generated_by = manifest.principal[:255]
        record.generated_date = manifest.created
        record.upstream = manifest.distributor.as_dict()
    return record


def _fail(record: ManifestImport, message: str, now: datetime | None = None) -> ManifestImport:
    now = now or timezone.now()
    record.state, record.status, record.message = (ManifestImport.State.FAILED,
                                                   ManifestImport.Status.FAILURE, message)
    record.payload = None
    record.started = record.started or now
    record.finished = now
    record.save()
    _prune(record.org_id)
    return record


def _conflict_message(conflicts: list[dict]) -> str:
    keys = " ".join(c["key"] for c in conflicts if not c["forced"])
    return f"Import failed. The following conflicts were found: [ {keys} ]"


# --- Entry points -----------------------------------------------------------------------------

def import_manifest(org: Organization, data: bytes, force: Iterable[str] = (), file_name: str = "",
                    principal: str = "", now: datetime | None = None) -> ManifestImport:
    """Import now, in the caller's request. Returns the history entry (SUCCESS or
    SUCCESS_WITH_WARNING); raises InvalidManifest (400, nothing stored), ValidationError
    (bad ``force``), ManifestConflict or ManifestRefused (409, FAILURE recorded)."""
    force = parse_force(force)
    upload = read_upload(data, force)
    record = _record(org, upload, force, file_name, principal)
    if upload.manifest is None:
        raise ManifestConflict(_fail(record, _conflict_message(record.conflicts)))
    record.state, record.started = ManifestImport.State.RUNNING, timezone.now()
    return _apply(org, upload.manifest, record, force, now)


def accept(org: Organization, data: bytes, force: Iterable[str] = (), file_name: str = "",
           principal: str = "") -> ManifestImport:
    """The Candlepin ``imports/async`` way: read and check now (400 on an unreadable file),
    store the parsed manifest in a job row and let a worker import it after commit. A failed
    signature that was not forced gives a job that is already FAILED."""
    force = parse_force(force)
    upload = read_upload(data, force)
    record = _record(org, upload, force, file_name, principal)
    if upload.manifest is None:
        return _fail(record, _conflict_message(record.conflicts))
    record.payload = upload.manifest.to_bytes()
    record.state = ManifestImport.State.CREATED
    with transaction.atomic():
        record.save()
        transaction.on_commit(lambda: _send(record.id))
    return record


run_job_task = TaskSlot("subscriptions.tasks.run_manifest_job")  # tasks.py fills it


def _send(record_id: int) -> None:
    run_job_task.delay(record_id)


def run_job(record_id: int) -> str:
    """Carry out a waiting import or delete job once (a compare-and-set claims it)."""
    now = timezone.now()
    claimed = ManifestImport.objects.filter(pk=record_id, state=ManifestImport.State.CREATED).update(
        state=ManifestImport.State.RUNNING, started=now, updated=now)
    if not claimed:
        return "skipped"
    record = ManifestImport.objects.select_related("org").get(pk=record_id)
    try:
        if record.kind == ManifestImport.Kind.DELETE:
            _delete(record.org, record)
        else:
            force = frozenset(record.forced)
            _apply(record.org, Manifest.from_bytes(bytes(record.payload)), record, force, None)
    except (ManifestConflict, ManifestRefused, NoManifest) as exc:
        log.info("manifest job %s failed: %s", record.uuid, exc)
        if record.state != ManifestImport.State.FAILED:
            _fail(record, str(exc) or "Nothing to delete: no manifest was imported.")
    return record.state


# --- The import -------------------------------------------------------------------------------

class _Stop(Exception):
    """Leave the transaction without writing anything."""


def _apply(org: Organization, manifest: Manifest, record: ManifestImport, force: frozenset[str],
           now: datetime | None) -> ManifestImport:
    dist = manifest.distributor
    try:
        # Every affected system is re-resolved once, after commit (performance.md P10).
        with services.deferred_resolution(), transaction.atomic():
            org = Organization.objects.select_for_update().get(pk=org.pk)  # one import per org
            other = (UpstreamDistributor.objects.filter(uuid=dist.uuid).exclude(org=org)
                     .select_related("org").first())
            if other is not None:
                record.message = (f"This subscription management application ({dist.uuid}) has already "
                                  f"been imported by another organization ({other.org.key}); delete the "
                                  "manifest there first.")
                raise _Stop()
            current = UpstreamDistributor.objects.filter(org=org).first()
            record.conflicts = [c for c in record.conflicts if c["key"] == SIGNATURE_CONFLICT]
            if current is not None:
                previous = current.manifest_created.replace(microsecond=0)
                created = manifest.created.replace(microsecond=0)
                if previous > created:
                    record.conflicts.append(_conflict(MANIFEST_OLD, MANIFEST_OLD in force))
                elif previous == created:
                    record.conflicts.append(_conflict(MANIFEST_SAME, MANIFEST_SAME in force))
                if current.uuid != dist.uuid:
                    record.conflicts.append(_conflict(DISTRIBUTOR_CONFLICT, DISTRIBUTOR_CONFLICT in force))
            if any(not c["forced"] for c in record.conflicts):
                record.message = _conflict_message(record.conflicts)
                raise _Stop()
            counts = _reconcile(org, manifest, now or timezone.now())
            _save_distributor(org, manifest, current)
            _finish(record, manifest, counts)
    except _Stop:
        _fail(record, record.message)
        if any(not c["forced"] for c in record.conflicts):
            raise ManifestConflict(record) from None
        raise ManifestRefused(record) from None
    except IntegrityError:  # another org took this distributor at the same moment
        record.message = f"This subscription management application ({dist.uuid}) has just been " \
                         "imported by another organization."
        _fail(record, record.message)
        raise ManifestRefused(record) from None
    _prune(org.pk)
    return record


def _finish(record: ManifestImport, manifest: Manifest, counts: dict) -> None:
    now = timezone.now()
    record.counts = counts
    record.state, record.finished, record.payload = ManifestImport.State.FINISHED, now, None
    record.started = record.started or now
    if counts["ended"] and not counts["active"]:
        record.status = ManifestImport.Status.SUCCESS_WITH_WARNING
        record.message = "No active subscriptions found in the file."
    elif counts["ended"]:
        record.status = ManifestImport.Status.SUCCESS_WITH_WARNING
        record.message = "One or more inactive subscriptions found in the file."
    else:
        record.status, record.message = ManifestImport.Status.SUCCESS, "Manifest imported."
    if record.conflicts:
        record.message += " Forced past: " + ", ".join(c["key"] for c in record.conflicts) + "."
    record.save()


def _save_distributor(org: Organization, manifest: Manifest, current: UpstreamDistributor | None) -> None:
    dist = manifest.distributor
    values = {"uuid": dist.uuid, "name": dist.name, "type": dist.type, "owner_key": dist.owner_key,
              "content_access_mode": dist.content_access_mode, "url_web": dist.url_web,
              "url_api": dist.url_api, "id_cert_serial": dist.id_cert_serial,
              "id_cert_expires": dist.id_cert_expires, "manifest_created": manifest.created,
              "manifest_version": manifest.version, "imported": timezone.now()}
    with transaction.atomic():  # a savepoint: a uuid race surfaces as IntegrityError
        UpstreamDistributor.objects.update_or_create(org=org, defaults=values)


def _upsert_products(org: Organization, manifest: Manifest) -> tuple[dict[str, Product], set[int]]:
    """Every product of the manifest, created or updated in the org set-based (hundreds of
    them in a real manifest): name, attributes, provided products, derived product. Returns
    the products by sku and the ids of those that changed (their pools may change too)."""
    wanted = manifest.products
    existing = {p.sku: p for p in Product.objects.filter(org=org, sku__in=list(wanted))}
    now = timezone.now()
    Product.objects.bulk_create(
        [Product(org=org, sku=p.sku, name=p.name[:255], attributes=p.attributes)
         for sku, p in wanted.items() if sku not in existing], batch_size=500)
    changed = []
    for sku, product in existing.items():
        data = wanted[sku]
        if (product.name, product.attributes) != (data.name, data.attributes):
            product.name, product.attributes, product.updated = data.name, data.attributes, now
            changed.append(product)
    Product.objects.bulk_update(changed, ["name", "attributes", "updated"], batch_size=500)
    by_sku = {p.sku: p for p in Product.objects.filter(org=org, sku__in=list(wanted))}
    relinked = []
    for sku, data in wanted.items():
        product = by_sku[sku]
        derived_id = by_sku[data.derived].pk if data.derived else None
        if data.derived and product.derived_product_id != derived_id:
            product.derived_product_id = derived_id
            relinked.append(product)
    Product.objects.bulk_update(relinked, ["derived_product"], batch_size=500)
    through = Product.provided_products.through
    ids = [p.pk for p in by_sku.values()]
    current = {(a, b): pk for pk, a, b in through.objects.filter(from_product_id__in=ids)
               .values_list("pk", "from_product_id", "to_product_id")}
    links = {(by_sku[sku].pk, by_sku[p].pk) for sku, data in wanted.items() for p in data.provided}
    through.objects.filter(pk__in=[pk for key, pk in current.items() if key not in links]).delete()
    added = links - set(current)
    through.objects.bulk_create([through(from_product_id=a, to_product_id=b)
                                 for a, b in sorted(added)], batch_size=1000)
    relinked_provided = {a for a, _ in added | (set(current) - links)}
    return by_sku, {p.pk for p in changed + relinked} | relinked_provided


def _match(existing: list[Subscription], entitlements: list[reader.Entitlement]
           ) -> tuple[list[tuple[reader.Entitlement, Subscription | None]], list[Subscription]]:
    """Candlepin's SubscriptionReconciler: the same upstream entitlement, else the same
    upstream pool with the same quantity, else the same upstream pool, largest first."""
    free = {s.pk: s for s in existing}
    matched: dict[str, Subscription] = {}
    by_ent = {s.upstream_entitlement_id: s for s in existing}
    for ent in entitlements:
        sub = by_ent.get(ent.id)
        if sub is not None and sub.pk in free:
            matched[ent.id] = free.pop(sub.pk)
    for same_quantity in (True, False):
        for ent in entitlements:
            if ent.id in matched:
                continue
            candidates = sorted((s for s in free.values() if s.upstream_pool_id == ent.pool_id
                                 and (not same_quantity or s.quantity == ent.quantity)),
                                key=lambda s: (-s.quantity, s.pk))
            if candidates:
                matched[ent.id] = free.pop(candidates[0].pk)
    return [(ent, matched.get(ent.id)) for ent in entitlements], list(free.values())


def _remove(subscription: Subscription, reason: str) -> set[int]:
    """Delete a manifest subscription with its pools; every entitlement is revoked and logged."""
    ents = list(Entitlement.objects.filter(pool__subscription=subscription).select_related(
        "system", "pool__product", "pool__subscription__product", "pool__requires_host"))
    affected = services.revoke_entitlements(ents, reason, TRIGGER) | {e.system_id for e in ents}
    subscription.delete()
    return affected


def _reconcile(org: Organization, manifest: Manifest, now: datetime) -> dict:
    """Bring the org's manifest subscriptions to the manifest's entitlements (org locked)."""
    products, changed_products = _upsert_products(org, manifest)
    existing = list(Subscription.objects.select_for_update(of=("self",)).filter(org=org, managed=True)
                    .select_related("product", "derived_product").order_by("id"))
    pairs, vanished = _match(existing, manifest.entitlements)
    counts = {"entitlements": len(pairs), "active": 0, "ended": 0, "created": 0, "updated": 0,
              "unchanged": 0, "removed": 0, "products": len(products), "revoked": 0}
    affected: set[int] = set()
    revoked_before = Entitlement.objects.filter(org=org).count()
    for ent, sub in pairs:
        if ent.end <= now:  # Candlepin skips ended subscriptions, and so deletes their pools
            counts["ended"] += 1
            if sub is not None:
                affected |= _remove(sub, "subscription_expired")
                counts["removed"] += 1
            continue
        counts["active"] += 1
        values = {"product": products[ent.product],
                  "derived_product": products[ent.derived] if ent.derived else None,
                  "quantity": ent.quantity, "start": ent.start, "end": ent.end,
                  "contract_number": ent.contract_number, "account_number": ent.account_number,
                  "order_number": ent.order_number, "upstream_pool_id": ent.pool_id,
                  "upstream_entitlement_id": ent.id, "upstream_cert_serial": ent.cert_serial}
        if sub is None:
            sub = Subscription.objects.create(org=org, managed=True, **values)
            counts["created"] += 1
        else:
            changed = [k for k, v in values.items() if getattr(sub, k) != v]
            for name in changed:
                setattr(sub, name, values[name])
            if changed:
                sub.save()
            counts["updated" if changed else "unchanged"] += 1
            if not changed and not {sub.product_id, sub.derived_product_id} & changed_products:
                continue  # same entitlement, same products: its pools stay as they are
        affected |= services.regenerate_subscription_pools(sub, TRIGGER)
    for sub in vanished:
        affected |= _remove(sub, "subscription_deleted")
        counts["removed"] += 1
    counts["revoked"] = max(0, revoked_before - Entitlement.objects.filter(org=org).count())
    # Systems that held what changed, and every system that may use the new pools: once.
    services.enqueue_coverage_seekers(org, None, TRIGGER, also=affected)
    return counts


# --- Delete ("undo imports") ------------------------------------------------------------------

def delete_manifest(org: Organization, principal: str = "") -> ManifestImport:
    """Remove every manifest subscription with its pools (their consumers re-resolved), forget
    the distributor and the last export time, and record a DELETE entry. NoManifest if none."""
    now = timezone.now()
    record = ManifestImport(org=org, kind=ManifestImport.Kind.DELETE, principal=principal[:255],
                            state=ManifestImport.State.RUNNING, started=now)
    return _delete(org, record)


def accept_delete(org: Organization, principal: str = "") -> ManifestImport:
    """The Candlepin ``DELETE /owners/{key}/imports`` job: 404 (NoManifest) if never imported."""
    if not UpstreamDistributor.objects.filter(org=org).exists() and not \
            Subscription.objects.filter(org=org, managed=True).exists():
        raise NoManifest()
    record = ManifestImport(org=org, kind=ManifestImport.Kind.DELETE, principal=principal[:255])
    with transaction.atomic():
        record.save()
        transaction.on_commit(lambda: _send(record.id))
    return record


def _delete(org: Organization, record: ManifestImport) -> ManifestImport:
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        current = UpstreamDistributor.objects.filter(org=org).first()
        subs = list(Subscription.objects.select_for_update().filter(org=org, managed=True).order_by("id"))
        if current is None and not subs:
            raise NoManifest()
        before = Entitlement.objects.filter(org=org).count()
        affected: set[int] = set()
        for sub in subs:
            affected |= _remove(sub, "manifest_deleted")
        services.enqueue_resolution(affected, TRIGGER)
        if current is not None:
            record.upstream = {"uuid": current.uuid, "name": current.name, "type": current.type,
                               "owner_key": current.owner_key}
            current.delete()
        who = record.principal or "an administrator"
        record.counts = {"removed": len(subs),
                         "revoked": max(0, before - Entitlement.objects.filter(org=org).count())}
        record.state, record.status = ManifestImport.State.FINISHED, ManifestImport.Status.DELETE
        record.message = f"Subscriptions deleted by {who}."
        record.finished = timezone.now()
        record.save()
    _prune(org.pk)
    return record


def _prune(org_id: int) -> None:
    """Keep the newest ``HISTORY_KEPT`` finished entries of the org (Candlepin keeps 10)."""
    keep = list(ManifestImport.objects.filter(org_id=org_id).order_by("-created", "-id")
                .values_list("pk", flat=True)[:HISTORY_KEPT])
    if len(keep) == HISTORY_KEPT:
        oldest = ManifestImport.objects.get(pk=keep[-1]).created
        (ManifestImport.objects.filter(org_id=org_id, created__lt=oldest)
         .exclude(state__in=[ManifestImport.State.CREATED, ManifestImport.State.RUNNING]).delete())
