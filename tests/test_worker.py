"""Background re-resolution through a real Celery worker process (Redis broker, PostgreSQL)."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings

from hypervisors import reports
from hypervisors import services as mapping
from hypervisors.models import Report
from orgs.models import System
from subscriptions import tasks
from subscriptions.models import Entitlement, Pool
from tests import workers
from tests.scenario import acme, guest, report, subscribe

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(transactional_db):
    workers.require_services()
    workers.flush_broker()
    proc = workers.start_worker()
    try:
        with workers.tasks_to_broker():
            yield proc
    finally:
        proc.kill()
    workers.assert_clean(proc)


def _entitled_from(system: System, host: System) -> bool:
    return Entitlement.objects.filter(system=system, pool__requires_host=host).exists()


def test_worker_reentitles_moved_guest(worker):
    org = acme()
    subscribe(org, "VDC", 2)
    esx1 = report(org, "esx1", ["g1"])
    esx2 = report(org, "esx2", [])
    g1 = guest(org, "g1")
    # Registration enqueued the resolution; nothing ran in this process.
    workers.wait_until(lambda: _entitled_from(g1, esx1), "g1 entitled from esx1 after registration")

    mapping.set_guest_list(org, esx1, [])
    mapping.set_guest_list(org, esx2, ["g1"])
    # No other call: the worker re-resolves the moved guest on its own.
    workers.wait_until(lambda: _entitled_from(g1, esx2) and not _entitled_from(g1, esx1),
                       "g1 moved to esx2's derived pool")
    assert Entitlement.objects.filter(system=esx2, pool__type=Pool.Type.NORMAL).count() == 1
    assert System.objects.get(pk=g1.pk).current_host_id == esx2.id


def test_report_applies_while_resolutions_wait(transactional_db):
    """P12: reports and resolutions travel on separate queues, so a report is applied by the
    report worker while a backlog of resolutions waits (here: with no resolution worker)."""
    workers.require_services()
    workers.flush_broker()
    org = acme()
    subscribe(org, "VDC", 1)
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "esx1"}, "name": "esx1",
                                        "guestIds": [{"guestId": "g1"}]}]}).encode()
    broker = redis.Redis.from_url(settings.REDIS_URL)
    proc = workers.start_worker(concurrency=1, queues=(settings.CELERY_TASK_DEFAULT_QUEUE,
                                                       settings.SAM_REPORT_QUEUE))
    try:
        with workers.tasks_to_broker():  # the backlog first, then the report, to a live worker
            for start in range(0, 200, 10):
                tasks.resolve_systems.delay(list(range(start + 1, start + 11)), "backlog")
            assert broker.llen(settings.SAM_RESOLUTION_QUEUE) == 20
            report = reports.accept_checkin(org, body, reporter_id="r1")

        def applied():
            return (Report.objects.get(pk=report.pk).state == Report.State.FINISHED)
        try:
            workers.wait_until(applied, "the report applied past the resolution backlog", 120)
        except pytest.fail.Exception:
            clients = [(c.get("addr"), c.get("cmd"), c.get("age")) for c in broker.client_list()]
            pytest.fail(f"report {Report.objects.get(pk=report.pk).state}, "
                        f"{broker.llen(settings.SAM_REPORT_QUEUE)} message(s) waiting, "
                        f"redis clients {clients}, worker log:\n{proc.output()[-6000:]}")
        assert broker.llen(settings.SAM_RESOLUTION_QUEUE) == 20  # untouched by this worker
    finally:
        proc.kill()
    workers.assert_clean(proc)
