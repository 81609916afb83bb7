"""Celery tasks of the check-in pipeline: thin, idempotent, ids only."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.db import OperationalError

from hypervisors import ingest, reports
from sam import locks, metrics

log = logging.getLogger(__name__)


@reports.apply_report_task.register
@shared_task(bind=True, acks_late=True, max_retries=5)
def apply_report_task(self, report_id: int) -> str:
    """Apply one stored report. Lock or connection trouble retries; anything else is a bug in
    the report or in sam, so the job ends FAILED with the error rather than looping."""
    start = time.monotonic()
    try:
        outcome = reports.apply_report(report_id)
    except OperationalError as exc:
        log.warning("report %s: database trouble, retrying: %s", report_id, exc)
        raise self.retry(countdown=2 ** self.request.retries) from exc
    except Exception as exc:  # noqa: BLE001 - logged in full with a reference by fail_report
        reports.fail_report(report_id, exc)
        return "failed"
    if outcome == "applied":
        metrics.report_applied(time.monotonic() - start)
    elif outcome == "superseded":
        metrics.REPORTS_SUPERSEDED.inc()
    return outcome


@ingest.write_timeline_task.register
@shared_task(bind=True, acks_late=True, max_retries=5)
def write_timeline_task(self, org_id: int) -> int:
    """Write the host timeline a large report of this org deferred (idempotent: nothing
    pending, nothing done)."""
    try:
        return ingest.write_pending_timelines(org_id)
    except OperationalError as exc:
        log.warning("org %s: database trouble writing the timeline, retrying: %s", org_id, exc)
        raise self.retry(countdown=2 ** self.request.retries) from exc


@shared_task(acks_late=True)
def requeue_reports() -> int | None:
    """Periodic: re-send reports left CREATED (broker outage, lost message, killed worker)."""
    with locks.try_session_lock(locks.SWEEP, locks.SWEEP_REQUEUE_REPORTS) as acquired:
        if not acquired:
            return None
        return reports.requeue_waiting()


@shared_task(acks_late=True)
def prune_history() -> dict | None:
    """Periodic (daily): drop old report payloads, prune reports, entitlement events, closed
    host timeline entries and coverage snapshots past ``SAM_HISTORY_DAYS`` (performance.md R10)."""
    with locks.try_session_lock(locks.SWEEP, locks.SWEEP_PRUNE_HISTORY) as acquired:
        if not acquired:
            return None
        return reports.prune_history()
