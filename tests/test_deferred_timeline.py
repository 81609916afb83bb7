"""A large report's host timeline is written after its apply (hypervisors/ingest.py, "Deferred
timeline"): the job is FINISHED sooner, and the timeline ends exactly as direct writes leave it,
even when the task that writes it is lost."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import transaction

from hypervisors import ingest, reports
from hypervisors.models import GuestHostInterval, Report
from orgs.models import System
from orgs.services import create_org
from tests import workers
from tests.factories import stored_report

pytestmark = pytest.mark.django_db(transaction=True)

# Three reports of one reporter: a first sighting, then moves, a new host, a guest that leaves
# every host and one that arrives; then one more move and a host emptied.
STEPS = [
    {"esx1": ["g1", "g2", "g3"], "esx2": ["g4", "g5"], "esx3": ["g6"]},
    {"esx1": ["g1", "g4"], "esx2": ["g5", "g2"], "esx3": ["g6", "g7"], "esx4": ["g3"]},
    {"esx1": [], "esx2": ["g5", "g1"], "esx3": ["g6", "g7", "g4"]},
]


def _timeline(org) -> list[tuple]:
    """The org's stays, comparable across orgs: which step opened them, still open or not."""
    step_of = {str(r.uuid): n for n, r in enumerate(Report.objects.filter(org=org).order_by("id"))}
    return sorted(
        (i.guest_uuid, i.host_hypervisor_id, i.host_name, i.host is not None, i.ended is None,
         step_of.get(i.source), i.report_id is not None)
        for i in GuestHostInterval.objects.filter(org=org).select_related("host"))


def _moved(report: Report) -> list:
    report.refresh_from_db()
    return report.diff["guests"]["moved"]


def _apply_steps(org, settings, defer_at: int) -> list:
    settings.SAM_TIMELINE_DEFER_GUESTS = defer_at
    moved = []
    for hosts in STEPS:
        report = stored_report(org, hosts)
        assert reports.apply_report(report.pk) == "applied"
        moved.append(_moved(report))
    return moved


def test_a_deferred_timeline_ends_as_direct_writes_leave_it(settings):
    """Both backends: the task runs right after commit (eager here, a worker in production)."""
    direct, deferred = create_org("DIRECT", "Direct"), create_org("DEFER", "Deferred")
    moved_direct = _apply_steps(direct, settings, defer_at=10_000)
    moved_deferred = _apply_steps(deferred, settings, defer_at=0)
    assert moved_deferred == moved_direct
    assert moved_direct[1] == [["g2", "esx1", "esx2"], ["g3", "esx1", "esx4"], ["g4", "esx2", "esx1"]]
    assert _timeline(deferred) == _timeline(direct)
    assert not Report.objects.filter(timeline__isnull=False).exists()
    # One open stay per guest, where it is listed last (esx4, not in the last report, keeps g3);
    # g2 left every host.
    open_stays = dict(GuestHostInterval.objects.filter(org=deferred, ended__isnull=True)
                      .values_list("guest_uuid", "host_hypervisor_id"))
    assert open_stays == {"g1": "esx2", "g3": "esx4", "g4": "esx3", "g5": "esx2",
                          "g6": "esx3", "g7": "esx3"}


@pytest.mark.postgres_only("the task's message waits in Redis, the broker")
def test_a_pending_timeline_is_written_before_the_next_apply_and_by_the_sweep(settings):
    """The task is sent and never run (no worker): the next apply of the org writes what is
    pending before it reads the open stays; the sweep re-sends what is still pending."""
    workers.require_services()
    direct, org = create_org("DIRECT", "Direct"), create_org("DEFER", "Deferred")
    _apply_steps(direct, settings, defer_at=10_000)
    settings.SAM_TIMELINE_DEFER_GUESTS = 0
    try:
        with workers.tasks_to_broker():
            first = stored_report(org, STEPS[0])
            assert reports.apply_report(first.pk) == "applied"
            first.refresh_from_db()
            assert first.timeline is not None and first.state == "FINISHED"
            assert not GuestHostInterval.objects.filter(org=org).exists()
            for hosts in STEPS[1:]:
                assert reports.apply_report(stored_report(org, hosts).pk) == "applied"
            # Only the last report's entries wait; the earlier ones were written first.
            pending = list(Report.objects.filter(timeline__isnull=False).values_list("id", flat=True))
            assert pending == [Report.objects.filter(org=org).order_by("-id")[0].id]
            # A sweep before the cutoff leaves them; after it, it sends the org's task.
            reports.requeue_waiting(timedelta(hours=1))
            assert Report.objects.filter(timeline__isnull=False).exists()
        workers.flush_broker()
        reports.requeue_waiting(timedelta(0))  # eager again: the task runs here
        assert not Report.objects.filter(timeline__isnull=False).exists()
        assert _timeline(org) == _timeline(direct)
    finally:
        workers.flush_broker()


@pytest.mark.worker
def test_a_worker_writes_the_timeline_after_the_job_finished(settings):
    """Through the broker and a real worker, as in production."""
    workers.require_services()
    direct, org = create_org("DIRECT", "Direct"), create_org("DEFER", "Deferred")
    _apply_steps(direct, settings, defer_at=10_000)
    worker = workers.start_worker(concurrency=1, SAM_TIMELINE_DEFER_GUESTS=0)
    try:
        with workers.tasks_to_broker():
            for hosts in STEPS:
                body = json.dumps({"hypervisors": [
                    {"hypervisorId": {"hypervisorId": n}, "name": n,
                     "guestIds": [{"guestId": g} for g in gs]} for n, gs in hosts.items()]})
                reports.accept_checkin(org, body.encode(), reporter_id="r1")
                # One at a time: a newer report of the reporter would supersede a waiting one.
                workers.wait_until(lambda: not Report.objects.filter(
                    org=org, state__in=Report.OPEN_STATES).exists(), "the report applied")
            workers.wait_until(lambda: not Report.objects.filter(timeline__isnull=False).exists(),
                               "the timeline written")
            workers.wait_idle()
    finally:
        worker.kill()
    workers.assert_clean(worker)
    assert _timeline(org) == _timeline(direct)


def test_a_small_report_writes_its_timeline_in_its_own_transaction(settings):
    settings.SAM_TIMELINE_DEFER_GUESTS = 500
    org = create_org("SMALL", "Small")
    report = stored_report(org, STEPS[0])
    assert reports.apply_report(report.pk) == "applied"
    report.refresh_from_db()
    assert report.timeline is None
    assert GuestHostInterval.objects.filter(org=org, ended__isnull=True).count() == 6


def test_pending_entries_survive_a_host_deleted_in_between(settings):
    """A host deleted before the entries are written: its stay keeps the name, not the link."""
    settings.SAM_TIMELINE_DEFER_GUESTS = 0
    org = create_org("DEL", "Deleted host")
    report = stored_report(org, {"esx1": ["g1"], "esx2": ["g2"]})
    # The task runs when the outer transaction commits, after the deletion.
    with transaction.atomic():
        assert reports.apply_report(report.pk) == "applied"
        assert Report.objects.get(pk=report.pk).timeline is not None
        System.objects.filter(org=org, hypervisor_id="esx2").delete()
    assert ingest.write_pending_timelines(org.id) == 0  # nothing left: the task wrote it
    stays = {i.guest_uuid: (i.host_id is not None, i.host_name)
             for i in GuestHostInterval.objects.filter(org=org)}
    assert stays == {"g1": (True, "esx1"), "g2": (False, "esx2")}


def test_a_stale_entry_never_blocks_the_org(settings, caplog):
    """If a guest already has an open stay when its deferred entry is written (nothing in sam
    does that), the entry is skipped with a warning instead of failing every later apply."""
    from django.utils import timezone

    settings.SAM_TIMELINE_DEFER_GUESTS = 0
    org = create_org("STALE", "Stale")
    with transaction.atomic():  # the task runs when this commits
        assert reports.apply_report(stored_report(org, {"esx1": ["g1", "g2"]}).pk) == "applied"
        host = System.objects.get(org=org, hypervisor_id="esx1")
        GuestHostInterval.objects.create(org=org, guest_uuid="g1", host=host, host_name="by hand",
                                         started=timezone.now(), source="test")
    assert not Report.objects.filter(timeline__isnull=False).exists()
    stays = sorted(GuestHostInterval.objects.filter(org=org, ended__isnull=True)
                   .values_list("guest_uuid", "host_name"))
    assert stays == [("g1", "by hand"), ("g2", "esx1")]
    assert "1 of 2 deferred stays not opened" in caplog.text
    assert reports.apply_report(stored_report(org, {"esx1": ["g2"]}).pk) == "applied"
