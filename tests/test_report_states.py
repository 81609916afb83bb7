"""A report's states as architecture.md describes them: CREATED → RUNNING → FINISHED.

The claim is committed before the apply's transaction, so a slow or stuck apply is visible
(job poll, UI, the requeue sweep); a report left RUNNING by a dead worker is applied again.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from hypervisors import reports
from hypervisors.models import Report
from orgs.models import System
from sam import locks
from tests import workers
from tests.factories import stored_report
from tests.scenario import acme

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.postgres_only("holds the org's advisory lock from a second connection")]


def _other_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                           user=db["USER"], password=db["PASSWORD"] or None, dbname=db["NAME"],
                           autocommit=True)


def test_a_claimed_report_reads_running_until_its_apply_commits():
    org = acme()
    report = stored_report(org, {"esx1": ["g1", "g2"]})
    other = _other_connection()
    outcome: list[str] = []
    try:
        # Another apply of the org holds its lock: this one is claimed and waits.
        other.execute("SELECT pg_advisory_lock(%s, %s)", [locks.ORG_REPORT, org.id])
        worker = threading.Thread(target=lambda: outcome.append(reports.apply_report(report.id)))
        worker.start()
        deadline = time.monotonic() + 10
        while Report.objects.get(pk=report.pk).state == Report.State.CREATED:
            assert time.monotonic() < deadline, "the claim was never committed"
            time.sleep(0.05)
        running = Report.objects.get(pk=report.pk)
        assert running.state == Report.State.RUNNING and running.started is not None
        assert running.state in Report.OPEN_STATES  # backpressure and the UI count it as open
        assert not System.objects.filter(org=org, hypervisor_id="esx1").exists()  # nothing yet
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [locks.ORG_REPORT, org.id])
        worker.join(20)
    finally:
        other.close()
        connection.close()
    assert outcome == ["applied"]
    done = Report.objects.get(pk=report.pk)
    assert done.state == Report.State.FINISHED and done.attempts == 1
    assert done.started == running.started <= done.finished
    assert System.objects.filter(org=org, hypervisor_id="esx1").exists()


def test_a_report_left_running_by_a_dead_worker_is_applied_again():
    org = acme()
    stuck = stored_report(org, {"esx1": ["g1"]})
    recent = stored_report(org, {"esx2": ["g2"]}, reporter="r2")
    after = timedelta(seconds=settings.SAM_REPORT_REQUEUE_AFTER)
    # A worker claimed both and died, one longer ago than the sweep waits.
    Report.objects.filter(pk=stuck.pk).update(state=Report.State.RUNNING,
                                              started=timezone.now() - 2 * after,
                                              updated=timezone.now() - 2 * after)
    Report.objects.filter(pk=recent.pk).update(state=Report.State.RUNNING, started=timezone.now())
    assert reports.requeue_waiting() == 1  # tasks run in-process here: applied at once
    assert Report.objects.get(pk=stuck.pk).state == Report.State.FINISHED
    assert Report.objects.get(pk=recent.pk).state == Report.State.RUNNING  # may still be running
    # Re-sent at most once per period: a report the sweep just re-sent (to the real broker
    # here, no worker takes it) waits for the next period.
    Report.objects.filter(pk=recent.pk).update(updated=timezone.now() - 2 * after)
    with workers.tasks_to_broker():
        assert reports.requeue_waiting() == 1
        assert reports.requeue_waiting() == 0
    workers.flush_broker()
    assert Report.objects.get(pk=recent.pk).state == Report.State.RUNNING
    # Its redelivered task (acks_late) applies it without waiting for the sweep.
    assert reports.apply_report(recent.pk) == "applied"
    assert set(System.objects.filter(org=org).exclude(hypervisor_id=None)
               .values_list("hypervisor_id", flat=True)) == {"esx1", "esx2"}


def test_a_running_report_that_fails_ends_failed():
    org = acme()
    report = stored_report(org, {"esx1": []})
    Report.objects.filter(pk=report.pk).update(state=Report.State.RUNNING, started=timezone.now())
    reference = reports.fail_report(report.pk, RuntimeError("boom"))
    failed = Report.objects.get(pk=report.pk)
    assert failed.state == Report.State.FAILED and reference in failed.result["message"]
