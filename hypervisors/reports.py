"""Check-in jobs: accept a virt-who report, apply it later, exactly once in effect.

The request validates, stores the compressed report with its hash and answers with the job
row; a worker claims the row under the org's lock and applies it (``hypervisors.ingest``).
Differences from Candlepin on purpose (virt-who-api.md): a newer waiting report of the same
reporter supersedes older ones instead of failing them; a report identical to the reporter's
last applied one is answered at once; too many waiting reports get a 429.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hypervisors import ingest
from hypervisors.ingest import BadReport
from hypervisors.models import Report
from orgs.models import Organization, System
from sam import locks

log = logging.getLogger(__name__)

__all__ = ["BadReport", "Backpressure", "accept_checkin", "apply_report", "heartbeat",
           "legacy_checkin", "requeue_waiting"]


class Backpressure(Exception):
    """Too many reports are waiting; the client should come back after ``retry_after`` s."""

    def __init__(self, retry_after: int):
        super().__init__(f"Too many hypervisor reports are waiting; retry in {retry_after} s.")
        self.retry_after = retry_after


def _digest(body: bytes, create_missing: bool) -> str:
    return hashlib.sha256(body + (b"|1" if create_missing else b"|0")).hexdigest()


def _send(report_id: int) -> None:
    """Hand the job to a worker; if the broker is down it stays CREATED for the sweep."""
    from hypervisors.tasks import apply_report_task

    try:
        apply_report_task.delay(report_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure; the row is the durable copy
        if settings.CELERY_TASK_ALWAYS_EAGER:
            raise
        log.warning("report %s stays CREATED, broker unavailable: %s", report_id, exc)


def accept_checkin(org: Organization, body: bytes, *, reporter_id: str = "", principal: str = "",
                   origin: str = "", create_missing: bool = True) -> Report:
    """Validate and store a check-in; raise ``BadReport`` (400) or ``Backpressure`` (429).

    The hash is checked before the body is parsed: virt-who resends identical reports, and
    answering those must not cost a parse of megabytes of JSON.
    """
    if body is None or not body.strip():
        raise BadReport(ingest.NOT_PROVIDED)
    digest = _digest(body, create_missing)
    now = timezone.now()
    reporter_id = (reporter_id or "")[:255]
    common = {"org": org, "reporter_id": reporter_id, "principal": principal[:255],
              "origin": origin[:255], "kind": Report.Kind.CHECKIN, "payload_hash": digest,
              "payload_size": len(body), "create_missing": create_missing}
    mine = Report.objects.filter(org=org, reporter_id=reporter_id, kind=Report.Kind.CHECKIN)
    last = (mine.filter(state=Report.State.FINISHED, superseded_by__isnull=True)
            .order_by("-finished", "-id").only("uuid", "payload_hash").first())
    if last is not None and last.payload_hash == digest and not mine.filter(
            state__in=Report.OPEN_STATES).exists():
        return _unchanged(org, common, last, now)
    data = ingest.load_body(body)
    with transaction.atomic():
        limit = settings.SAM_REPORT_QUEUE_LIMIT
        if Report.objects.filter(state__in=Report.OPEN_STATES).count() >= limit:
            raise Backpressure(settings.SAM_REPORT_RETRY_AFTER)
        report = Report.objects.create(
            payload=zlib.compress(body, 1), state=Report.State.CREATED,
            hypervisor_count=len(data["hypervisors"]), **common)
        transaction.on_commit(lambda: _send(report.id))
    return report


def _unchanged(org: Organization, common: dict, last: Report, now: datetime) -> Report:
    """Same report as last applied: a check-in for its hypervisors, nothing re-applied."""
    previous = Report.objects.filter(pk=last.pk).values_list("result", "hypervisor_count").first()
    result, count = previous if previous else ({}, 0)
    listed = [h for key in ("created", "updated", "unchanged") for h in (result or {}).get(key, [])]
    with transaction.atomic():
        if common["reporter_id"]:  # as the heartbeat: one UPDATE by reporter
            hypervisors = System.objects.filter(org=org, reporter_id=common["reporter_id"],
                                                hypervisor_id__isnull=False)
        else:
            hypervisors = System.objects.filter(org=org, uuid__in=[h["uuid"] for h in listed])
        hypervisors.update(last_checkin=now)
        return Report.objects.create(
            state=Report.State.FINISHED, started=now, finished=now, hypervisor_count=count,
            result={"created": [], "updated": [], "unchanged": sorted(
                listed, key=lambda h: (h["name"], h["uuid"])), "failedUpdate": []},
            diff={"identical_to": str(last.uuid)}, **common)


def apply_report(report_id: int) -> str:
    """Apply a stored report once: claim it under the org's lock, or finish it as superseded
    by a newer waiting report of the same reporter. Safe to call any number of times."""
    with transaction.atomic():
        head = Report.objects.filter(pk=report_id).values("org_id", "state").first()
        if head is None or head["state"] != Report.State.CREATED:
            return "skipped"
        locks.xact_lock(locks.ORG_REPORT, head["org_id"])
        report = Report.objects.select_for_update().select_related("org").filter(pk=report_id).first()
        if report is None or report.state != Report.State.CREATED:
            return "skipped"
        now = timezone.now()
        newer = (Report.objects.filter(org_id=report.org_id, reporter_id=report.reporter_id,
                                       kind=Report.Kind.CHECKIN, state=Report.State.CREATED,
                                       id__gt=report.id)
                 .order_by("-id").only("id", "uuid").first())
        if newer is not None:
            report.state = Report.State.FINISHED
            report.superseded_by = newer
            report.started = report.finished = now
            report.result = {"created": [], "updated": [], "unchanged": [], "failedUpdate": [],
                             "supersededBy": str(newer.uuid),
                             "message": f"Superseded by the newer report {newer.uuid} of the "
                                        "same reporter, which is applied instead."}
            report.save(update_fields=["state", "superseded_by", "started", "finished", "result",
                                       "updated"])
            return "superseded"
        data = json.loads(zlib.decompress(bytes(report.payload)))
        entries = ingest.parse_entries(data)
        applied = ingest.apply_entries(
            report.org, entries, reporter_id=report.reporter_id or None,
            create_missing=report.create_missing, now=now, report_id=report.id,
            source=str(report.uuid))
        report.state = Report.State.FINISHED
        report.attempts += 1
        report.started = now
        report.finished = timezone.now()
        report.result = applied.result_data()
        report.diff = applied.diff()
        report.guest_count = sum(len(e.guests or {}) for e in entries)
        report.save(update_fields=["state", "attempts", "started", "finished", "result", "diff",
                                   "guest_count", "updated"])
        return "applied"


def fail_report(report_id: int, error: str) -> None:
    """A report that cannot be applied (a bug, not load) ends FAILED instead of looping."""
    now = timezone.now()
    Report.objects.filter(pk=report_id, state=Report.State.CREATED).update(
        state=Report.State.FAILED, error=error[:4000], finished=now, updated=now,
        result={"created": [], "updated": [], "unchanged": [], "failedUpdate": [],
                "message": f"The report could not be applied: {error[:500]}"})


def requeue_waiting(older_than: timedelta | None = None) -> int:
    """Re-send reports still CREATED after a while (broker outage, lost message, killed worker).
    Applying is idempotent, so a duplicate message costs nothing but a lock wait."""
    older_than = older_than if older_than is not None else timedelta(
        seconds=settings.SAM_REPORT_REQUEUE_AFTER)
    cutoff = timezone.now() - older_than
    ids = list(Report.objects.filter(state=Report.State.CREATED, created__lte=cutoff)
               .order_by("id").values_list("id", flat=True)[:1000])
    for report_id in ids:
        _send(report_id)
    return len(ids)


def heartbeat(org: Organization, reporter_id: str, principal: str = "", origin: str = "") -> Report:
    """Every hypervisor of this reporter checked in now: one UPDATE, one job row."""
    now = timezone.now()
    with transaction.atomic():
        System.objects.filter(org=org, reporter_id=reporter_id, hypervisor_id__isnull=False
                              ).update(last_checkin=now)
        return Report.objects.create(
            org=org, kind=Report.Kind.HEARTBEAT, reporter_id=reporter_id[:255],
            principal=principal[:255], origin=origin[:255], state=Report.State.FINISHED,
            started=now, finished=now,
            result=f'Last hypervisor check-in updated for owner "{org.key}" by reporter: '
                   f"{reporter_id}")


def legacy_checkin(org: Organization, body: bytes, *, principal: str = "", origin: str = "",
                   create_missing: bool = True) -> Report:
    """The synchronous check-in of clients that do not see ``hypervisors_async``:
    ``{hypervisorId: [guest, ...]}``, applied in the request (no facts, names or reporter)."""
    if body is None or not body.strip():
        raise BadReport(ingest.NOT_PROVIDED)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadReport(ingest.INVALID) from None
    if not isinstance(data, dict) or "hypervisors" in data:
        raise BadReport(ingest.INVALID)
    items = [{"hypervisorId": {"hypervisorId": key}, "guestIds": guests or []}
             for key, guests in data.items() if isinstance(key, str) and key.strip()]
    entries = ingest.parse_entries({"hypervisors": items})
    now = timezone.now()
    with transaction.atomic():
        report = Report.objects.create(
            org=org, kind=Report.Kind.LEGACY, principal=principal[:255], origin=origin[:255],
            state=Report.State.CREATED, payload=zlib.compress(body, 1),
            payload_hash=_digest(body, create_missing), payload_size=len(body),
            create_missing=create_missing, hypervisor_count=len(items))
        applied = ingest.apply_entries(org, entries, create_missing=create_missing, now=now,
                                       report_id=report.id, source=str(report.uuid))
        report.state = Report.State.FINISHED
        report.attempts = 1
        report.started, report.finished = now, timezone.now()
        report.result = applied.result_data()
        report.diff = applied.diff()
        report.guest_count = sum(len(e.guests or {}) for e in entries)
        report.save()
    return report
