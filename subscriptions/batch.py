"""Set-based resolution of guests (domain.md 5): a batch of any size in a fixed number of
statements (performance.md P5, P10).

The common cases — guests whose host changed, guests that lost their host, guests of a host
that gained or lost a subscription — come down to revoking entitlements a guest no longer
qualifies for and granting from pools that already exist (above all its host's derived pool).
Guests never make pools (only a non-guest's entitlement does), so these decisions need no
row-by-row writes: the batch reads every input once, decides each guest in memory with the
same engine rules and in the same order as ``services.resolve_system`` would (ascending id,
each guest seeing the units the previous ones took), then writes with one DELETE of the revoked
entitlements, one grouped UPDATE of the pools' consumed counts (under the pool's CHECK
``consumed <= quantity``), one INSERT of the new entitlements and one of the events.

What the batch cannot decide is left to per-system resolution, which runs after it: non-guests
(stacking, sockets, derived pools), guests whose host needs host auto-attach first, and
whatever would come out differently in that order (see ``_Plan.keeps``). Both paths give the
same entitlements and consumed counts (tests/test_resolution_batch.py).

Locks: the batch takes the SYSTEM locks of its guests and their hosts in ascending key order in
one statement, the order per-system resolution uses too, so the two never interleave (R1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from orgs.models import Organization, System
from sam import locks
from subscriptions import engine
from subscriptions.catalog import LoadedCatalog, load_catalog
from subscriptions.models import Entitlement, EntitlementCertificate, EntitlementEvent, Pool
from subscriptions.services import _event, _uncovered, entitlements_changed, org_pools

log = logging.getLogger(__name__)

_ENT_RELATED = ("pool__product", "pool__subscription__product",
                "pool__subscription__derived_product", "pool__requires_host")


@dataclass
class BatchResult:
    resolved: list[int] = field(default_factory=list)  # decided and written by the batch
    deferred: list[int] = field(default_factory=list)  # left to per-system resolution, in order


ATTEMPTS = 3


class _Conflict(Exception):
    """The rows changed under the batch (a pool deleted or filled concurrently): roll back and
    let per-system resolution decide these systems."""


def resolve_guests(system_ids, trigger: str) -> BatchResult:
    """Resolve the guests among ``system_ids`` set-based, per org; return what is left for
    per-system resolution (non-guests, undecidable guests, deleted systems excluded)."""
    ids = sorted({int(i) for i in system_ids})
    result = BatchResult()
    by_org: dict[int, list[int]] = {}
    for system_id, org_id in System.objects.filter(id__in=ids).values_list("id", "org_id"):
        by_org.setdefault(org_id, []).append(system_id)
    for org_id, org_ids in sorted(by_org.items()):
        resolved: list[int] = []
        deferred = org_ids
        for attempt in range(1, ATTEMPTS + 1):
            try:
                resolved, deferred = _resolve_org(org_id, sorted(org_ids), trigger,
                                                  lock_pools=attempt > 1)
                break
            except _Conflict as exc:
                # Another batch took units of a shared pool meanwhile: decide again on fresh
                # counts, this time holding the shared pools' rows (so no third batch can take
                # them first); after the last attempt, per system.
                log.info("set-based resolution of %d systems, attempt %d: %s",
                         len(org_ids), attempt, exc)
        result.resolved += resolved
        result.deferred += deferred
    result.deferred.sort()
    return result


@dataclass
class _Plan:
    """What the batch decided so far, and what later guests must respect so that the outcome
    equals per-system resolution in ascending id order."""

    now: datetime
    trigger: str
    delta: dict[int, int] = field(default_factory=dict)  # pool id -> units (+ taken, - given back)
    revoked: list[tuple[Entitlement, str]] = field(default_factory=list)
    granted: list[Entitlement] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)
    deferred_hosts: set[int | None] = field(default_factory=set)
    # Host auto-attach decided here: (the guest that caused it, the host's entitlement, the
    # derived pool it makes); written before the guests' entitlements that use the pool.
    host_grants: list[tuple[int, Entitlement, Pool]] = field(default_factory=list)
    host_held: dict[int, set[int]] = field(default_factory=dict)
    # guest id -> (guest, its entitlements once written): what the stored compliance and the
    # certificates are computed from, without loading them again.
    final: dict[int, tuple[System, list[Entitlement]]] = field(default_factory=dict)
    stop: bool = False  # a guest the batch must not reorder around: the rest goes per-system
    pools: dict[int, Pool] = field(default_factory=dict)  # current pools, counts as decided
    pools_locked: bool = False  # the org's limited shared pools are locked (a second attempt)

    def keeps(self, host_id: int | None, touched: list[Pool]) -> bool:
        """Once a guest was deferred (it resolves after the batch), a later guest may still be
        decided here only if nothing it touches could have been seen by that guest: pools
        restricted to its own host, and a host no deferred guest has."""
        if self.stop:
            return False
        if not self.deferred:
            return True
        if host_id in self.deferred_hosts:
            return False
        return all(p.requires_host_id is not None and p.requires_host_id not in self.deferred_hosts
                   for p in touched)


def _resolve_org(org_id: int, system_ids: list[int], trigger: str,
                 lock_pools: bool = False) -> tuple[list[int], list[int]]:
    """One org's systems in one transaction: the guests decided here, the rest deferred.

    Optimistic first: the shared pools' counts are read unlocked and written last, so batches
    of other hosts run side by side. ``lock_pools`` (after a conflict on a scarce pool): the
    org's limited shared pools are locked, in id order, before their counts are read."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # The batch's joins over a thousand ids look expensive to the planner, which then
            # spends more compiling them (JIT, ~70 ms a query) than running them.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        heads = dict(System.objects.filter(id__in=system_ids, is_guest=True)
                     .values_list("id", "current_host_id"))
        locks.xact_lock_all(locks.SYSTEM, set(system_ids) | {h for h in heads.values() if h})
        if lock_pools:
            list(Pool.objects.select_for_update(no_key=True).filter(
                org_id=org_id, requires_host__isnull=True).exclude(quantity=-1)
                .order_by("id").values_list("id"))
        systems = list(System.objects.filter(id__in=system_ids)
                       .select_related("org", "current_host").order_by("id"))
        if not systems:
            return [], []
        org = systems[0].org
        for system in systems:
            system.org = org  # one org object: the engine reads its settings for every guest
        guests = [s for s in systems if s.is_guest and s.id in heads]
        host_ids = sorted({g.current_host_id for g in guests if g.current_host_id})
        # Non-guests too, unless guests of this batch run on them (host auto-attach would
        # change them in the middle of the batch).
        physical = [s for s in systems if not s.is_guest and s.id not in set(host_ids)]
        by_id = {s.id: s for s in guests + physical}
        now = timezone.now()
        ents_of: dict[int, list[Entitlement]] = {}
        for ent in (Entitlement.objects.filter(system_id__in=list(by_id))
                    .select_related(*_ENT_RELATED).order_by("created", "id")):
            ent.system = by_id[ent.system_id]
            ents_of.setdefault(ent.system_id, []).append(ent)
        # Entitlements that feed a derived pool (a guest that was a host once): revoking them
        # deletes pools, which per-system resolution does.
        sources = set(Pool.objects.filter(source_entitlement__system_id__in=list(by_id))
                      .values_list("source_entitlement_id", flat=True))
        catalog = load_catalog(org)
        shared: list[Pool] = []
        of_host: dict[int, list[Pool]] = {}
        for pool in org_pools(org).filter(Q(requires_host__isnull=True)
                                          | Q(requires_host_id__in=host_ids),
                                          end__gt=now, start__lte=now).order_by("id"):
            if pool.requires_host_id is None:
                shared.append(pool)
            else:
                of_host.setdefault(pool.requires_host_id, []).append(pool)
        current = {p.id: p for ps in [shared, *of_host.values()] for p in ps}

        plan = _Plan(now=now, trigger=trigger, pools=current, pools_locked=lock_pools)
        for host_id, pool_id in (Entitlement.objects.filter(system_id__in=host_ids)
                                 .values_list("system_id", "pool_id")):
            plan.host_held.setdefault(host_id, set()).add(pool_id)
        for system in systems:
            if system.id not in by_id:
                # A host of guests of the batch (or a system that became a guest just now):
                # per-system, and its own guests' pools may change with it.
                _defer(plan, system, stop=system.is_guest)
                plan.deferred_hosts.add(system.id)
            elif plan.stop or (system.is_guest and system.current_host_id != heads[system.id]):
                # Its host changed before we held the locks (the new host is not locked).
                _defer(plan, system, stop=True)
            else:
                _decide(plan, system, ents_of.get(system.id, []), sources, catalog,
                        shared, of_host, current)
        _write(plan, org, set(system_ids), catalog)
        return plan.resolved, plan.deferred


def _defer(plan: _Plan, guest: System, stop: bool = False) -> None:
    plan.deferred.append(guest.id)
    plan.deferred_hosts.add(guest.current_host_id)
    plan.stop = plan.stop or stop


def _decide(plan: _Plan, guest: System, ents: list[Entitlement], sources: set[int],
            catalog: engine.Catalog, shared: list[Pool], of_host: dict[int, list[Pool]],
            current: dict[int, Pool]) -> None:
    """One system, as ``services._resolve`` would do it, in memory; or defer it. A non-guest
    is deferred where per-system resolution does more than take one unit of a pool: a
    multi-entitlement (socket-stacked) candidate, a pool that makes a derived pool for its
    guests, revoking what feeds one."""
    if guest.self_removed_at or (guest.current_host and guest.current_host.self_removed_at):
        _defer(plan, guest)  # client intent: weighed per system (services.client_intent_holds)
        return
    now, org = plan.now, guest.org
    host_id = guest.current_host_id if guest.is_guest else None
    pools = shared + of_host.get(host_id, [])
    # Steps 1 and 3: what the guest no longer qualifies for.
    stale: list[tuple[Entitlement, str]] = []
    for ent in ents:
        pool = ent.pool
        if ent.end <= now or pool.end <= now:
            stale.append((ent, "expired"))
        elif host_id is not None and pool.requires_host_id not in (None, host_id):
            stale.append((ent, "host_mismatch"))
        elif host_id is not None and pool.unmapped_guests_only:
            stale.append((ent, "unmapped_has_host"))
    if any(ent.id in sources or (not guest.is_guest and (
            engine.makes_derived_pool(ent.pool, guest)
            or engine.stacking_id(ent.pool.subscription.product))) for ent, _ in stale):
        _defer(plan, guest, stop=True)
        return
    stale_ids = {ent.id for ent, _ in stale}
    kept = [e for e in ents if e.id not in stale_ids]
    granted: list[Entitlement] = []
    taken: list[Pool] = []
    for ent, _ in stale:  # units given back first, as revoke_entitlements does
        if ent.pool_id in current:
            current[ent.pool_id].consumed -= ent.quantity

    host_grants: list[tuple[int, Entitlement, Pool]] = []

    def undo() -> None:  # this guest resolves after the batch, per system
        for ent, _ in stale:
            if ent.pool_id in current:
                current[ent.pool_id].consumed += ent.quantity
        for pool in taken:
            pool.consumed -= 1
        for _, host_ent, derived in host_grants:
            host_ent.pool.consumed -= host_ent.quantity
            plan.host_held[host_ent.system_id].discard(host_ent.pool_id)
            of_host[host_ent.system_id].remove(derived)
        _defer(plan, guest)

    if guest.autoheal and org.autobind_enabled:
        wanted = _uncovered(guest, kept, catalog, now)
        host = guest.current_host if guest.is_guest else None
        if wanted and host is not None and host.autoheal and org.hypervisor_autobind_enabled:
            # Step 3, host auto-attach first, as services._host_auto_attach does it.
            if not _host_auto_attach(plan, guest, host, wanted, pools, of_host, catalog,
                                     host_grants):
                undo()
                return
            pools = shared + of_host.get(host_id, [])
        held = list(kept)
        for product_id in sorted(wanted):
            if product_id not in _uncovered(guest, held, catalog, now):
                continue
            view = engine.SystemView(guest, host_id, {e.pool_id for e in held})
            providing = [p for p in pools if product_id in catalog.pool_provides(p)]
            if not guest.is_guest and any(p.multi_entitlement for p in providing):
                undo()  # units from the system's sockets and its stack: per system
                return
            options = [(engine.candidate_order(p, 1, host_id), p) for p in providing
                       if engine.check_pool(view, p, org, now, 1) is None]
            if not options:
                continue
            _, pool = min(options, key=lambda o: o[0])
            if engine.makes_derived_pool(pool, guest):
                undo()  # a host's derived pool and its guests' follow-up: per system
                return
            end = pool.end
            if pool.unmapped_guests_only:
                end = min(end, guest.registered_at + org.unmapped_lifetime)
            ent = Entitlement(org_id=guest.org_id, system=guest, pool=pool, quantity=1, start=now,
                              end=end, multi_entitlement=pool.multi_entitlement)
            pool.consumed += 1  # later guests of the batch see the unit taken
            taken.append(pool)
            held.append(ent)
            granted.append(ent)
    touched = [e.pool for e, _ in stale] + taken + [e.pool for _, e, _ in host_grants]
    if not plan.keeps(host_id, touched):
        undo()
        return
    for ent, reason in stale:
        plan.revoked.append((ent, reason))
        plan.delta[ent.pool_id] = plan.delta.get(ent.pool_id, 0) - ent.quantity
    for _, host_ent, _ in host_grants:
        plan.delta[host_ent.pool_id] = plan.delta.get(host_ent.pool_id, 0) + host_ent.quantity
    plan.host_grants += host_grants
    for ent in granted:
        plan.granted.append(ent)
        if ent.pool.pk is not None:  # a new derived pool is written with its consumed count
            plan.delta[ent.pool_id] = plan.delta.get(ent.pool_id, 0) + ent.quantity
    plan.resolved.append(guest.id)
    plan.final[guest.id] = (guest, kept + granted)


def _host_auto_attach(plan: _Plan, guest: System, host: System, wanted: set[str],
                      pools: list[Pool], of_host: dict[int, list[Pool]], catalog: engine.Catalog,
                      host_grants: list) -> bool:
    """Entitle ``host`` (in memory) to a subscription with virtual guests for each wanted
    product its derived pools do not offer, making the derived pool (domain.md 3.3, 5 step 3).
    False when that needs what only per-system resolution does (a stacked subscription)."""
    now, org = plan.now, guest.org
    held = plan.host_held.setdefault(host.id, set())
    for product_id in sorted(wanted):
        if any(p.requires_host_id == host.id and product_id in catalog.pool_provides(p)
               and (p.quantity == -1 or p.consumed < p.quantity) for p in pools):
            continue
        view = engine.SystemView(host, None, held)
        options = []
        for pool in pools:
            if pool.type != Pool.Type.NORMAL or engine.virt_limit(pool.subscription.product) is None:
                continue
            if product_id not in catalog.host_pool_provides_for_guests(pool):
                continue
            if engine.stacking_id(pool.subscription.product) or (
                    pool.multi_entitlement and engine.stacking_id(pool.product)):
                return False  # a stack-derived pool and stack units: per system
            if engine.check_pool(view, pool, org, now, 1) is None:
                limit = engine.virt_limit(pool.subscription.product)
                options.append(((0 if limit == -1 else 1, 1, pool.end, pool.id), pool))
        if not options:
            continue
        _, pool = min(options, key=lambda o: o[0])
        ent = Entitlement(org_id=host.org_id, system=host, pool=pool, quantity=1, start=now,
                          end=pool.end, multi_entitlement=pool.multi_entitlement)
        subscription = pool.subscription
        derived = Pool(
            org_id=host.org_id, subscription=subscription, type=Pool.Type.ENTITLEMENT_DERIVED,
            product=engine.derived_pool_product(pool),
            quantity=engine.virt_limit(subscription.product), consumed=0, start=pool.start,
            end=pool.end, attributes={"virt_only": "true", "pool_derived": "true",
                                      "requires_host": str(host.uuid)},
            virt_only=True, requires_host=host, source_entitlement=ent, created=now)
        pool.consumed += 1
        held.add(pool.id)
        of_host.setdefault(host.id, []).append(derived)
        pools.append(derived)
        host_grants.append((guest.id, ent, derived))
    return True


def _write(plan: _Plan, org: Organization, batch_ids: set[int], catalog: LoadedCatalog) -> None:
    """The batch's writes: a fixed number of statements whatever its size; then the one
    post-resolution hook for every guest decided here (as per-system resolution calls it for
    every system it resolves) and the hosts it entitled; the pools' consumed counts last,
    except those of scarce pools, first."""
    changes = {pool_id: d for pool_id, d in plan.delta.items() if d}
    scarce = {pool_id: d for pool_id, d in changes.items()
              if d > 0 and _scarce(plan.pools.get(pool_id), d)}
    if scarce:
        # Units another batch may be taking right now: claimed before the expensive part (the
        # certificates), and a batch holding them makes this one decide again, waiting.
        _take_scarce(scarce, wait=plan.pools_locked)
    if plan.revoked or plan.granted or plan.host_grants:
        _write_changes(plan)
    hosts = {e.system_id for _, e, _ in plan.host_grants}
    decided = set(plan.resolved) | hosts
    if decided:
        known = {i: entry for i, entry in plan.final.items() if i not in hosts}
        entitlements_changed(org, decided, plan.trigger,
                             follow_up=_guests_of_entitled_hosts(plan, batch_ids),
                             known=known, catalog=catalog)
    rest = {pool_id: d for pool_id, d in changes.items() if pool_id not in scarce}
    if rest:
        # Last, just before COMMIT: the rows of shared pools (the subscription every host
        # draws from, the old hosts' derived pools) stay locked for a moment only, so
        # batches in other workers (other hosts) do not wait through this one's certificates.
        try:
            if _add_consumed(rest) != len(rest):
                raise _Conflict("a pool of the batch was deleted meanwhile")
        except IntegrityError as exc:  # filled concurrently (CHECK consumed <= quantity)
            raise _Conflict(str(exc)) from exc


def _scarce(pool: Pool | None, taken: int) -> bool:
    """A limited pool this batch leaves with fewer units than it took: a concurrent batch
    could well want the same ones."""
    return pool is not None and pool.quantity != -1 and pool.quantity - pool.consumed < taken


def _take_scarce(changes: dict[int, int], wait: bool) -> None:
    """Lock (without waiting, unless they are already ours) and count the units of scarce
    pools; another batch holding one, or having filled it, is a conflict."""
    try:
        if not wait and connection.features.has_select_for_update_nowait:
            list(Pool.objects.select_for_update(no_key=True, nowait=True)
                 .filter(id__in=list(changes)).order_by("id").values_list("id"))
        if _add_consumed(changes) != len(changes):
            raise _Conflict("a pool of the batch was deleted meanwhile")
    except (IntegrityError, OperationalError) as exc:
        raise _Conflict(str(exc)) from exc


def _write_changes(plan: _Plan) -> None:
    try:
        with transaction.atomic():  # a savepoint: a conflict leaves the batch unwritten
            revoked_ids = [e.id for e, _ in plan.revoked]
            if revoked_ids:
                deleted = _delete_entitlements(revoked_ids)
                if deleted != len(revoked_ids):
                    raise _Conflict(f"{len(revoked_ids) - deleted} entitlement(s) already gone")
            if plan.host_grants:  # the hosts' entitlements, then the pools they make
                Entitlement.objects.bulk_create([e for _, e, _ in plan.host_grants])
                Pool.objects.bulk_create([p for _, _, p in plan.host_grants])
            Entitlement.objects.bulk_create(plan.granted)
            events = [_event(e, "revoked", reason, plan.trigger, e.system, e.pool)
                      for e, reason in plan.revoked]
            events += [_event(e, "attached", "host_auto_attach", plan.trigger, e.system, e.pool)
                       for _, e, _ in plan.host_grants]
            events += [_event(e, "attached", "auto_attach", plan.trigger, e.system, e.pool)
                       for e in plan.granted]
            EntitlementEvent.objects.bulk_create(events)
    except IntegrityError as exc:
        raise _Conflict(str(exc)) from exc


def _guests_of_entitled_hosts(plan: _Plan, batch_ids: set[int]) -> set[int]:
    """A host that gained an entitlement re-resolves its guests (domain.md 6) — except those of
    this batch from the guest that caused it on, which are resolved now (as ``queued`` in
    per-system resolution)."""
    if not plan.host_grants:
        return set()
    last_cause: dict[int, int] = {}
    for cause, ent, _ in plan.host_grants:
        last_cause[ent.system_id] = max(cause, last_cause.get(ent.system_id, cause))
    return {guest_id for guest_id, host_id in System.objects.filter(
                current_host_id__in=list(last_cause)).values_list("id", "current_host_id")
            if guest_id not in batch_ids or guest_id < last_cause[host_id]}


def _chunks(items: list, size: int = 5000):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _delete_entitlements(ids: list[int]) -> int:
    """One DELETE per 5,000 entitlements. The batch never revokes an entitlement that feeds a
    derived pool, so nothing cascades and Django's collector (a SELECT per relation) is not
    needed; their certificates (the one relation that points at them) go first, by key."""
    table = connection.ops.quote_name(Entitlement._meta.db_table)
    certs = connection.ops.quote_name(EntitlementCertificate._meta.db_table)
    deleted = 0
    with connection.cursor() as cursor:
        for chunk in _chunks(ids):
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(f"DELETE FROM {certs} WHERE entitlement_id IN ({marks})", chunk)
            cursor.execute(f"DELETE FROM {table} WHERE id IN ({', '.join(['%s'] * len(chunk))})",
                           chunk)
            deleted += cursor.rowcount
    return deleted


def _add_consumed(changes: dict[int, int]) -> int:
    """One grouped UPDATE of consumed counts (portable SQL: a CASE on the id), its rows locked
    first in ascending id order so that two batches never lock them crosswise. The pool's CHECK
    constraint refuses a count beyond its quantity, so a pool another transaction filled
    meanwhile fails the batch instead of over-consuming."""
    table = connection.ops.quote_name(Pool._meta.db_table)
    updated = 0
    with connection.cursor() as cursor:
        for chunk in _chunks(sorted(changes.items()), 2000):
            list(Pool.objects.select_for_update(no_key=True).filter(
                id__in=[pool_id for pool_id, _ in chunk]).order_by("id").values_list("id"))
            cases = " ".join("WHEN %s THEN %s" for _ in chunk)
            params = [v for pair in chunk for v in pair] + [pool_id for pool_id, _ in chunk]
            cursor.execute(
                f"UPDATE {table} SET consumed = consumed + CASE id {cases} END "
                f"WHERE id IN ({', '.join(['%s'] * len(chunk))})", params)
            updated += cursor.rowcount
    return updated
