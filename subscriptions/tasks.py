"""Celery tasks: thin wrappers that take ids, claim or lock, and call the services.

Every task may run twice (acks_late, redelivery after a lost worker): resolution is idempotent
and the sweeps skip when another run of the same sweep holds its lock.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from orgs.models import Organization
from sam import locks
from subscriptions import services

log = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=5, acks_late=True)
def resolve_systems(self, system_ids: list[int], trigger: str = "heal") -> dict:
    """Resolve each system in its own transaction; retry only the ones that hit a lock error."""
    failed: list[int] = []
    done = 0
    ids = [int(i) for i in system_ids]
    for position, system_id in enumerate(ids):
        try:
            later = frozenset(ids[position + 1:])
            if services.resolve_system(system_id, trigger, queued=later) is not None:
                done += 1
        except OperationalError as exc:  # deadlock / serialization: try again shortly
            log.warning("resolution of system %s failed, will retry: %s", system_id, exc)
            failed.append(system_id)
    if failed:
        if self.request.is_eager:
            for system_id in failed:
                services.resolve_system(system_id, trigger)
        else:
            raise self.retry(args=[failed, trigger], countdown=2 ** self.request.retries)
    return {"resolved": done, "retried": len(failed)}


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
