"""Celery tasks: thin wrappers that take ids, claim or lock, and call the services.

Every task may run twice (acks_late, redelivery after a lost worker): resolution is idempotent
and the sweeps skip when another run of the same sweep holds its lock.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from orgs import content_access
from orgs.models import Organization
from sam import locks, metrics
from subscriptions import batch, pending, services
from subscriptions import content_access as subscriptions_content_access
from subscriptions.manifest import importer

log = logging.getLogger(__name__)


def _resolve(ids: list[int], trigger: str) -> tuple[int, list[int]]:
    """Resolve the guests set-based (``SAM_RESOLUTION=batch``), then each system left in its
    own transaction: (systems resolved, systems that hit a lock error)."""
    failed: list[int] = []
    done = 0
    ids = sorted({int(i) for i in ids})
    if settings.SAM_RESOLUTION == "batch":
        try:
            outcome = batch.resolve_guests(ids, trigger)
            done, ids = len(outcome.resolved), outcome.deferred
        except OperationalError as exc:  # deadlock / serialization: per system below
            log.warning("set-based resolution of %d systems failed, per system: %s", len(ids), exc)
    for position, system_id in enumerate(ids):
        try:
            later = frozenset(ids[position + 1:])
            if services.resolve_system(system_id, trigger, queued=later) is not None:
                done += 1
        except OperationalError as exc:  # deadlock / serialization: try again shortly
            log.warning("resolution of system %s failed, will retry: %s", system_id, exc)
            failed.append(system_id)
    metrics.resolution_batch(done)
    return done, failed


@services.resolve_systems_task.register
@shared_task(bind=True, max_retries=5, acks_late=True)
def resolve_systems(self, system_ids: list[int], trigger: str = "heal") -> dict:
    """Resolve a batch of systems; retry only the ones that hit a lock error."""
    done, failed = _resolve(system_ids, trigger)
    if failed:
        if self.request.is_eager:
            for system_id in failed:
                services.resolve_system(system_id, trigger)
        else:
            raise self.retry(args=[failed, trigger], countdown=2 ** self.request.retries)
    return {"resolved": done, "retried": len(failed)}


@pending.resolve_pending_task.register
@shared_task(bind=True, max_retries=None, acks_late=True)
def resolve_pending(self) -> dict:
    """Resolve what coalesced enqueues left waiting (subscriptions/pending.py), in tasks'
    worth of systems grouped by host, until nothing waits. One at a time: another run holding
    the lock means this one comes back later (what it would have taken stays waiting)."""
    resolved = retried = 0
    with locks.try_session_lock(locks.SWEEP, locks.SWEEP_RESOLVE_PENDING) as acquired:
        if not acquired:
            raise self.retry(countdown=settings.SAM_RESOLUTION_COALESCE_MS / 1000)
        while entries := pending.take():
            by_trigger: dict[str, list[int]] = {}
            for system_id, value in sorted(entries.items()):
                by_trigger.setdefault(pending.trigger_of(value), []).append(system_id)
            failed: set[int] = set()
            for trigger, ids in sorted(by_trigger.items()):
                for chunk in services.host_batches(ids, settings.SAM_RESOLVE_BATCH):
                    done, missed = _resolve(chunk, trigger)
                    resolved += done
                    failed |= set(missed)
            pending.done({i: v for i, v in entries.items() if i not in failed})
            if failed:  # they stay waiting: a lock error, tried again shortly
                retried += len(failed)
                raise self.retry(countdown=1)
    return {"resolved": resolved, "retried": retried}


@content_access.apply_task.register
@shared_task(acks_late=True)
def apply_content_access(system_ids: list[int]) -> dict[str, int]:
    """Issue or revoke the certificates of consumers whose content access mode changed."""
    return subscriptions_content_access.apply(system_ids)


def _sweep(number: int, work) -> int | None:
    """Run ``work`` unless another run of the same sweep is still going (no overlap)."""
    with locks.try_session_lock(locks.SWEEP, number) as acquired:
        if not acquired:
            log.info("sweep %s already running; skipped", number)
            return None
        return work()


@shared_task(acks_late=True)
def expire_unmapped_entitlements() -> int | None:
    return _sweep(locks.SWEEP_EXPIRE_UNMAPPED, services.expire_unmapped_entitlements)


@shared_task(acks_late=True)
def expire_subscriptions() -> int | None:
    return _sweep(locks.SWEEP_EXPIRE_SUBSCRIPTIONS, services.expire_subscriptions)


@shared_task(acks_late=True)
def heal_all_orgs() -> int | None:
    def work() -> int:
        total = 0
        for org in Organization.objects.filter(autobind_enabled=True):
            total += services.heal_org(org)
        return total

    return _sweep(locks.SWEEP_HEAL_ALL, work)




@shared_task(acks_late=True)
def record_coverage_snapshots() -> int | None:
    """Once a day (beat): upsert today's coverage snapshot of every org (dashboard chart)."""
    from subscriptions import coverage

    return _sweep(locks.SWEEP_COVERAGE_SNAPSHOTS, coverage.record_all)


@importer.run_job_task.register
@shared_task(acks_late=True)
def run_manifest_job(record_id: int) -> str:
    """A manifest import or delete accepted by the Candlepin ``imports`` endpoints."""
    return importer.run_job(record_id)
