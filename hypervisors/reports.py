"""Check-in jobs: accept a virt-who report, apply it later, exactly once in effect.

The request validates, stores the compressed report with its hash and answers with the job
row; a worker claims the row under the org's lock and applies it (``hypervisors.ingest``).
Differences from Candlepin on purpose (virt-who-api.md): a newer waiting report of the same
reporter supersedes older ones instead of failing them; a report identical to the reporter's
last applied one is answered at once while nothing else has written what it describes; too many
waiting reports of one org or one reporter get a 429 (performance.md R9).

Retention (R10): identical re-reports and heartbeats update a row instead of adding one, stored
payloads are dropped some days after the job ended, and old reports are pruned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import zlib
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from hypervisors import ingest
from hypervisors.ingest import BadReport
from hypervisors.models import GuestHostInterval, Report
from orgs.models import Organization, System
from sam import locks, metrics
from sam.task_slots import TaskSlot
from subscriptions import services as subscriptions

log = logging.getLogger(__name__)

__all__ = ["BadReport", "Backpressure", "accept_checkin", "apply_report", "drop_old_payloads",
           "fail_report", "heartbeat", "invalidate_report_shortcut", "legacy_checkin",
           "prune_old_reports", "requeue_waiting"]

DONE_STATES = (Report.State.FINISHED, Report.State.FAILED, Report.State.CANCELED)
PRUNE_BATCH = 5000
invalidate_report_shortcut = ingest.invalidate_report_shortcut


class Backpressure(Exception):
    """Too many reports are waiting; the client should come back after ``retry_after`` s."""

    def __init__(self, retry_after: int, why: str = "Too many hypervisor reports are waiting"):
        super().__init__(f"{why}; retry in {retry_after} s.")
        self.retry_after = retry_after


def _digest(body: bytes, create_missing: bool) -> str:
    return hashlib.sha256(body + (b"|1" if create_missing else b"|0")).hexdigest()


apply_report_task = TaskSlot("hypervisors.tasks.apply_report_task")  # tasks.py fills it


def _send(report_id: int) -> None:
    """Hand the job to a worker; if the broker is down it stays CREATED for the sweep."""
    apply_report_task.delay_or_leave(report_id, waiting=f"report {report_id} stays CREATED")


def check_waiting_limits(org: Organization, reporter_id: str) -> None:
    """Raise ``Backpressure`` when the org, or this reporter of it, has too many open reports.

    Per org and per reporter, never global (performance.md R9): one org flooding check-ins
    must not block the others. One count over the open-report index; a soft limit (two
    requests racing may both pass), which is all backpressure needs.
    """
    counts = Report.objects.filter(org=org, state__in=Report.OPEN_STATES).aggregate(
        org_open=Count("id"), reporter_open=Count("id", filter=Q(reporter_id=reporter_id)))
    if (counts["org_open"] >= settings.SAM_REPORT_ORG_QUEUE_LIMIT
            or counts["reporter_open"] >= settings.SAM_REPORT_REPORTER_QUEUE_LIMIT):
        raise Backpressure(settings.SAM_REPORT_RETRY_AFTER)


def accept_checkin(org: Organization, body: bytes, *, reporter_id: str = "", principal: str = "",
                   origin: str = "", create_missing: bool = True) -> Report:
    """Validate and store a check-in; raise ``BadReport`` (400) or ``Backpressure`` (429).

    The hash is checked before the body is parsed: virt-who resends identical reports, and
    answering those must not cost a parse of megabytes of JSON. The shortcut holds only while
    the hypervisors the last applied report wrote still carry its stamp (nothing else wrote
    them since); otherwise the same bytes are applied in full.
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
            .order_by("-finished", "-id")
            .only("uuid", "payload_hash", "same_as_id", "written").first())
    if (last is not None and last.payload_hash == digest
            and not mine.filter(state__in=Report.OPEN_STATES).exists()
            and ingest.report_still_written(org, reporter_id, last.same_as_id or last.id,
                                            last.written)):
        answer = _unchanged(org, common, last, now)
        metrics.REPORTS_IDENTICAL.inc()
        return answer
    data = ingest.load_body(body)
    check_waiting_limits(org, reporter_id)
    with transaction.atomic():
        report = Report.objects.create(
            payload=zlib.compress(body, 1), state=Report.State.CREATED,
            hypervisor_count=len(data["hypervisors"]), **common)
        transaction.on_commit(metrics.REPORTS_ACCEPTED.inc)
        transaction.on_commit(lambda: _send(report.id))
    return report


def _unchanged(org: Organization, common: dict, last: Report, now: datetime) -> Report:
    """Same report as last applied: a check-in for its hypervisors, nothing re-applied.

    The first repeat of an applied report gets one row listing every hypervisor as unchanged;
    later repeats update that row (retention: no row per re-report)."""
    applied_id = last.same_as_id or last.id
    with transaction.atomic():
        # As the heartbeat: one UPDATE (HOT: only the check-in time changes).
        hypervisors = System.objects.filter(org=org, written_by_report=applied_id)
        if common["reporter_id"]:
            hypervisors = hypervisors.filter(reporter_id=common["reporter_id"])
        hypervisors.update(last_checkin=now)
        if last.same_as_id is not None and Report.objects.filter(
                pk=last.pk, state=Report.State.FINISHED).update(
                repeats=F("repeats") + 1, last_seen=now, finished=now, updated=now):
            return Report.objects.select_related("org").defer("payload", "diff", "timeline").get(pk=last.pk)
        previous = (Report.objects.filter(pk=applied_id)
                    .values_list("uuid", "result", "hypervisor_count").first())
        uuid, result, count = previous if previous else (last.uuid, {}, 0)
        listed = [h for key in ("created", "updated", "unchanged")
                  for h in (result or {}).get(key, [])]
        return Report.objects.create(
            state=Report.State.FINISHED, started=now, finished=now, hypervisor_count=count,
            result={"created": [], "updated": [], "unchanged": sorted(
                listed, key=lambda h: (h["name"], h["uuid"])), "failedUpdate": []},
            diff={"identical_to": str(uuid)}, same_as_id=applied_id, written=last.written,
            **common)


# A report in these states is still to be applied (RUNNING: claimed, not yet finished).
_APPLICABLE = (Report.State.CREATED, Report.State.RUNNING)


def apply_report(report_id: int) -> str:
    """Apply a stored report once: claim it under the org's lock, or finish it as superseded
    by a newer waiting report of the same reporter. Safe to call any number of times.

    The claim is committed first (CREATED → RUNNING, with ``started``), so a slow or stuck
    apply is visible to the job poller, the UI and ``requeue_waiting``; the apply itself is one
    transaction that ends FINISHED. A worker that dies mid-apply leaves the report RUNNING with
    nothing of it applied, and the redelivered task (or the sweep) applies it again."""
    claimed_at = timezone.now()
    Report.objects.filter(pk=report_id, state=Report.State.CREATED).update(
        state=Report.State.RUNNING, started=claimed_at, updated=claimed_at)
    with transaction.atomic():
        head = Report.objects.filter(pk=report_id).values("org_id", "state").first()
        if head is None or head["state"] not in _APPLICABLE:
            return "skipped"
        locks.xact_lock(locks.ORG_REPORT, head["org_id"])
        report = Report.objects.select_for_update().select_related("org").filter(pk=report_id).first()
        if report is None or report.state not in _APPLICABLE:
            return "skipped"
        now = timezone.now()
        # A newer report of the reporter, waiting or already applied (two worker processes can
        # take a reporter's reports out of order): this one is stale either way, and applying
        # it after the newer one would bring back a mapping the reporter has since replaced.
        newer = (Report.objects.filter(org_id=report.org_id, reporter_id=report.reporter_id,
                                       kind=Report.Kind.CHECKIN, id__gt=report.id,
                                       state__in=(*_APPLICABLE, Report.State.FINISHED),
                                       superseded_by__isnull=True)
                 .order_by("-id").only("id", "uuid").first())
        if newer is not None:
            report.state = Report.State.FINISHED
            report.superseded_by = newer
            report.finished = now
            report.started = report.started or now
            report.result = {"created": [], "updated": [], "unchanged": [], "failedUpdate": [],
                             "supersededBy": str(newer.uuid),
                             "message": f"Superseded by the newer report {newer.uuid} of the "
                                        "same reporter, which is applied instead of it."}
            report.save(update_fields=["state", "superseded_by", "started", "finished", "result",
                                       "updated"])
            return "superseded"
        data = json.loads(zlib.decompress(bytes(report.payload)))
        entries = ingest.parse_entries(data)
        applied = ingest.apply_entries(
            report.org, entries, reporter_id=report.reporter_id or None,
            create_missing=report.create_missing, now=now, report_id=report.id,
            source=str(report.uuid), org_locked=True)
        report.state = Report.State.FINISHED
        report.attempts += 1
        report.started = report.started or now
        report.finished = timezone.now()
        report.result = applied.result_data()
        report.diff = applied.diff()
        report.written = len(applied.created) + len(applied.updated) + len(applied.unchanged)
        report.guest_count = sum(len(e.guests or {}) for e in entries)
        report.save(update_fields=["state", "attempts", "started", "finished", "result", "diff",
                                   "written", "guest_count", "updated"])
        return "applied"


@metrics.gauge_at_scrape
def waiting_reports() -> list[GaugeMetricFamily]:
    """``sam_reports_waiting{org}``: one grouped count over the open-report index."""
    gauge = GaugeMetricFamily("sam_reports_waiting", "Reports not yet applied (CREATED, WAITING "
                              "or RUNNING), per org", labels=["org"])
    for key, count in (Report.objects.filter(state__in=Report.OPEN_STATES)
                       .values_list("org__key").annotate(n=Count("id")).order_by("org__key")):
        gauge.add_metric([key], count)
    return [gauge]


def fail_report(report_id: int, exc: BaseException) -> str:
    """A report that cannot be applied (a bug, not load) ends FAILED instead of looping.

    Clients (the job, the API, the UI) see a generic text with a log reference; the full error
    goes to the log (with its traceback) and to the report's ``error``, which only the
    operators' admin shows. Returns the reference."""
    reference = secrets.token_hex(6)
    error = f"{type(exc).__name__}: {exc}"
    log.error("report %s could not be applied (reference %s): %s", report_id, reference, error,
              exc_info=exc)
    now = timezone.now()
    failed = Report.objects.filter(pk=report_id, state__in=_APPLICABLE).update(
        state=Report.State.FAILED, error=f"[reference {reference}] {error}"[:4000], finished=now,
        updated=now,
        result={"created": [], "updated": [], "unchanged": [], "failedUpdate": [],
                "message": "The report could not be applied because of an internal error "
                           f"(reference {reference}); the server's log has the details."})
    if failed:
        metrics.REPORTS_FAILED.inc()
    return reference


def requeue_waiting(older_than: timedelta | None = None) -> int:
    """Re-send reports still CREATED after a while (broker outage, lost message), and reports
    RUNNING that long since they were claimed or last re-sent (a killed worker: its message
    waits for Redis' visibility timeout). Applying is idempotent: a duplicate of an apply
    that is in fact still running waits for the org's lock and then finds it FINISHED; a
    report is re-sent at most once per ``older_than``."""
    older_than = older_than if older_than is not None else timedelta(
        seconds=settings.SAM_REPORT_REQUEUE_AFTER)
    now = timezone.now()
    cutoff = now - older_than
    ids = list(Report.objects.filter(
        Q(state=Report.State.CREATED, created__lte=cutoff)
        | Q(state=Report.State.RUNNING, updated__lte=cutoff))
        .order_by("id").values_list("id", flat=True)[:1000])
    Report.objects.filter(id__in=ids, state=Report.State.RUNNING).update(updated=now)
    for report_id in ids:
        _send(report_id)
    # Timelines a large report deferred and whose task was lost (the org's next apply would
    # also write them first).
    for org_id in (Report.objects.filter(timeline__isnull=False, finished__lte=cutoff)
                   .values_list("org_id", flat=True).distinct().order_by("org_id")[:1000]):
        ingest.send_timeline(org_id)
    return len(ids)


def heartbeat_message(org: Organization, reporter_id: str) -> str:
    return f'Last hypervisor check-in updated for owner "{org.key}" by reporter: {reporter_id}'


def heartbeat(org: Organization, reporter_id: str, principal: str = "", origin: str = "") -> Report:
    """Every hypervisor of this reporter checked in now: one UPDATE.

    Retention: the heartbeat is recorded on the reporter's last finished report (its job id is
    the one answered, and polling it says FINISHED); a row is added only for a reporter that
    has none yet."""
    now = timezone.now()
    reporter_id = reporter_id[:255]
    with transaction.atomic():
        System.objects.filter(org=org, reporter_id=reporter_id, hypervisor_id__isnull=False
                              ).update(last_checkin=now)
        last = (Report.objects.filter(org=org, reporter_id=reporter_id,
                                      kind__in=[Report.Kind.CHECKIN, Report.Kind.HEARTBEAT],
                                      state=Report.State.FINISHED)
                .order_by("-finished", "-id").values_list("id", flat=True).first())
        if last is not None and Report.objects.filter(pk=last, state=Report.State.FINISHED).update(
                repeats=F("repeats") + 1, last_seen=now, last_heartbeat=now, updated=now):
            return (Report.objects.select_related("org").defer("payload", "diff", "result", "timeline")
                    .get(pk=last))
        return Report.objects.create(
            org=org, kind=Report.Kind.HEARTBEAT, reporter_id=reporter_id,
            principal=principal[:255], origin=origin[:255], state=Report.State.FINISHED,
            started=now, finished=now, last_heartbeat=now,
            result=heartbeat_message(org, reporter_id))


def legacy_checkin(org: Organization, body: bytes, *, principal: str = "", origin: str = "",
                   create_missing: bool = True) -> Report:
    """The synchronous check-in of clients that do not see ``hypervisors_async``:
    ``{hypervisorId: [guest, ...]}``, applied in the request (no facts, names or reporter).

    It counts against the org's waiting-report limits and answers ``Backpressure`` (429) when
    the org's reports are being applied, instead of holding a web thread behind that lock."""
    if body is None or not body.strip():
        raise BadReport(ingest.NOT_PROVIDED)
    data = ingest.parse_json(body)
    if not isinstance(data, dict) or "hypervisors" in data:
        raise BadReport(ingest.INVALID)
    items = [{"hypervisorId": {"hypervisorId": key}, "guestIds": guests or []}
             for key, guests in data.items() if isinstance(key, str) and key.strip()]
    entries = ingest.parse_entries({"hypervisors": items})
    check_waiting_limits(org, "")
    now = timezone.now()
    start = time.monotonic()
    with transaction.atomic():
        if not locks.try_xact_lock(locks.ORG_REPORT, org.id):
            raise Backpressure(settings.SAM_REPORT_RETRY_AFTER,
                               "Hypervisor reports of this organization are being applied")
        report = Report.objects.create(
            org=org, kind=Report.Kind.LEGACY, principal=principal[:255], origin=origin[:255],
            state=Report.State.CREATED, payload=zlib.compress(body, 1),
            payload_hash=_digest(body, create_missing), payload_size=len(body),
            create_missing=create_missing, hypervisor_count=len(items))
        applied = ingest.apply_entries(org, entries, create_missing=create_missing, now=now,
                                       report_id=report.id, source=str(report.uuid),
                                       org_locked=True)
        report.state = Report.State.FINISHED
        report.attempts = 1
        report.started, report.finished = now, timezone.now()
        report.result = applied.result_data()
        report.diff = applied.diff()
        report.written = len(applied.created) + len(applied.updated) + len(applied.unchanged)
        report.guest_count = sum(len(e.guests or {}) for e in entries)
        report.save()
    metrics.REPORTS_ACCEPTED.inc()
    metrics.report_applied(time.monotonic() - start)
    return report


# --- Retention (performance.md R10) -------------------------------------------------------------

def drop_old_payloads(now: datetime | None = None) -> int:
    """Drop the stored body of reports that ended more than ``SAM_REPORT_PAYLOAD_DAYS`` ago.
    Hash, size, result and diff stay (history and the identical-report shortcut need no body).
    Batched, served by ``report_payload_finished_idx``."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SAM_REPORT_PAYLOAD_DAYS)
    dropped = 0
    while True:
        ids = list(Report.objects.filter(payload__isnull=False, finished__lt=cutoff,
                                         state__in=DONE_STATES)
                   .order_by("finished").values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            return dropped
        dropped += Report.objects.filter(id__in=ids).update(payload=None)


def prune_old_reports(now: datetime | None = None) -> int:
    """Delete finished reports whose last activity is older than ``SAM_HISTORY_DAYS``."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SAM_HISTORY_DAYS)
    old = (Report.objects.filter(state__in=DONE_STATES, timeline__isnull=True)
           .alias(active=Coalesce("last_seen", "finished", "created"))
           .filter(active__lt=cutoff))
    deleted = 0
    while True:
        ids = list(old.order_by("id").values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            return deleted
        with transaction.atomic():
            deleted += Report.objects.filter(id__in=ids).delete()[1].get(Report._meta.label, 0)


def prune_history(now: datetime | None = None) -> dict[str, int]:
    """Everything retention removes, oldest first; returns what was removed per kind."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SAM_HISTORY_DAYS)
    counts = {"payloads": drop_old_payloads(now), "reports": prune_old_reports(now)}
    deleted = 0
    while ids := list(GuestHostInterval.objects.filter(ended__lt=cutoff).order_by("id")
                      .values_list("id", flat=True)[:PRUNE_BATCH]):
        deleted += GuestHostInterval.objects.filter(id__in=ids).delete()[0]
    counts["host_intervals"] = deleted
    counts.update(subscriptions.prune_history(cutoff))
    return counts
