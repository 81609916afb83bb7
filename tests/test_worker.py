"""Background re-resolution through a real Celery worker process (Redis broker, PostgreSQL)."""

from __future__ import annotations

import pytest

from hypervisors import services as mapping
from orgs.models import System
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
