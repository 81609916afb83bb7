"""Celery tasks of the check-in pipeline: thin, idempotent, ids only."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from hypervisors import reports
from sam import locks

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, max_retries=5)
def apply_report_task(self, report_id: int) -> str:
    """Apply one stored report. Lock or connection trouble retries; anything else is a bug in
    the report or in sam, so the job ends FAILED with the error rather than looping."""
    try:
        return reports.apply_report(report_id)
    except OperationalError as exc:
        log.warning("report %s: database trouble, retrying: %s", report_id, exc)
        raise self.retry(countdown=2 ** self.request.retries) from exc
    except Exception as exc:
        log.exception("report %s failed", report_id)
        reports.fail_report(report_id, f"{type(exc).__name__}: {exc}")
        return "failed"


@shared_task(acks_late=True)
def requeue_reports() -> int | None:
    """Periodic: re-send reports left CREATED (broker outage, lost message, killed worker)."""
    with locks.try_session_lock(locks.SWEEP, locks.SWEEP_REQUEUE_REPORTS) as acquired:
        if not acquired:
            return None
        return reports.requeue_waiting()
