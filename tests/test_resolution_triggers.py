"""Which systems a change re-resolves (domain.md 6, issue 12 item 2): exactly those whose inputs
changed, and each once per import (transactional: the tasks run at commit)."""

from __future__ import annotations

import pytest
from django.db import transaction

from hypervisors import services as mapping
from subscriptions import importer, pending, tasks
from subscriptions import services as subs
from tests.scenario import acme, guest, physical, report, status, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def enqueued(monkeypatch):
    """Every (system ids, trigger) sent to the resolution task, which still runs."""
    sent: list[tuple[list[int], str]] = []
    original = tasks.resolve_systems.delay

    def delay(system_ids, trigger="heal"):
        sent.append((sorted(system_ids), trigger))
        return original(system_ids, trigger)

    monkeypatch.setattr(tasks.resolve_systems, "delay", delay)
    return sent


def _ids(sent) -> list[int]:
    return sorted(i for ids, _ in sent for i in ids)


def test_report_resolves_only_guests_whose_host_changed(enqueued):
    org = acme()
    subscribe(org, "VDC", 3)
    report(org, "esx1", ["g1", "g2"])
    report(org, "esx2", [])
    g1, g2 = guest(org, "g1"), guest(org, "g2")
    enqueued.clear()
    # Only an attribute of g2's row changes, and g1 moves: g1 alone is resolved.
    mapping.report_hypervisor(org, "esx1", guests=[{"guestId": "g1"},
                                                   {"guestId": "g2", "attributes": {"active": 0}}])
    assert enqueued == []
    mapping.report_hypervisor(org, "esx2", guests=["g1"])
    assert _ids(enqueued) == [g1.id]
    assert status(g1) == "valid" and status(g2) == "valid"


def test_unrelated_fact_change_resolves_nothing(enqueued):
    org = acme()
    box = physical(org, "box", facts={"cpu.cpu_socket(s)": "2"})
    enqueued.clear()
    mapping.update_system(org, box.uuid, facts={"cpu.cpu_socket(s)": "2", "memory.memtotal": "8"})
    mapping.update_system(org, box.uuid, name="box-renamed")
    assert enqueued == []
    mapping.update_system(org, box.uuid, facts={"cpu.cpu_socket(s)": "4"})
    assert _ids(enqueued) == [box.id]
    enqueued.clear()
    mapping.update_system(org, box.uuid, installed_products=[{"productId": "69"}])
    assert _ids(enqueued) == [box.id]


def test_new_subscription_resolves_only_systems_it_can_cover(enqueued):
    org = acme()
    subs.create_product(org, "69", "Other product")
    subs.create_product(org, "OTHER", "Other subscription", provided=["69"])
    rhel = physical(org, "rhel-box")
    other = physical(org, "other-box", products=[{"productId": "69"}])
    enqueued.clear()
    subscribe(org, "OTHER", 1)
    assert _ids(enqueued) == [other.id]
    enqueued.clear()
    subscribe(org, "VDC", 1)  # its guests' derived product provides 479
    assert _ids(enqueued) == [rhel.id]


def test_import_resolves_each_system_once(enqueued):
    org = acme()
    boxes = [physical(org, f"box{i}") for i in range(3)]
    enqueued.clear()
    rows = importer.parse_json({"subscriptions": [
        {"product": "RHEL-4G", "quantity": 1, "start": "2025-01-01", "end": "2099-01-01",
         "contract_number": f"C-{i}"} for i in range(5)]})
    result = importer.run(org, rows)
    assert result["subscriptions"]["created"] == 5
    assert _ids(enqueued) == sorted(b.id for b in boxes)  # once each, not five times
    assert [status(b) for b in boxes] == ["valid"] * 3


def test_import_reads_the_systems_once_and_resolves_only_those_it_can_cover(enqueued):
    """The systems an import may cover are looked up once for all its subscriptions, with
    the skus of every one of them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    org = acme()
    subs.create_product(org, "69", "Other product")
    subs.create_product(org, "OTHER", "Other subscription", provided=["69"])
    subs.create_product(org, "72", "Unrelated product")
    rhel = physical(org, "rhel-box")
    other = physical(org, "other-box", products=[{"productId": "69"}])
    physical(org, "unrelated-box", products=[{"productId": "72"}])
    enqueued.clear()
    rows = importer.parse_json({"subscriptions": [
        {"product": sku, "quantity": 1, "start": "2025-01-01", "end": "2099-01-01",
         "contract_number": f"C-{i}"} for i, sku in enumerate(["RHEL-4G", "OTHER"] * 3)]})
    with CaptureQueriesContext(connection) as ctx:
        importer.run(org, rows)
    reads = [q["sql"] for q in ctx.captured_queries
             if '"installed_products" FROM "orgs_system"' in q["sql"]]
    assert len(reads) == 1, reads
    assert _ids(enqueued) == sorted([rhel.id, other.id])
    assert status(rhel) == status(other) == "valid"


def test_deferred_block_that_fails_enqueues_nothing(enqueued):
    org = acme()
    physical(org, "box")
    enqueued.clear()
    with pytest.raises(RuntimeError), subs.deferred_resolution(), transaction.atomic():
        subscribe(org, "RHEL-4G", 1)
        raise RuntimeError("rolled back by the caller")
    assert enqueued == []


# --- Coalesced resolution (subscriptions/pending.py): real Redis, the task run here --------------

@pytest.fixture
def coalescing(settings):
    """Small enqueues go to Redis (as with workers); the test runs the task itself."""
    from tests import workers

    workers.require_services()
    workers.flush_broker()
    settings.SAM_RESOLUTION_COALESCE_MS = 200
    with workers.tasks_to_broker():
        yield pending
    pending.client().delete(pending._key(), pending._key() + ":armed")
    workers.flush_broker()


@pytest.mark.postgres_only("coalesced resolution waits in Redis (workers' setting)")
def test_registrations_wait_together_and_resolve_in_one_batch(coalescing):
    org = acme()
    subscribe(org, "VDC", 2)
    report(org, "esx1", ["g1", "g2", "g3"])
    report(org, "esx2", ["g4"])
    guests = [guest(org, f"g{i}") for i in range(1, 5)]  # each registration enqueues itself
    assert pending.waiting() == 4  # nothing resolved yet: waiting for the window
    assert all(status(g) == "invalid" for g in guests)
    assert tasks.resolve_pending.apply().get() == {"resolved": 4, "retried": 0}
    assert pending.waiting() == 0
    assert [status(g) for g in guests] == ["valid"] * 4


@pytest.mark.postgres_only("coalesced resolution waits in Redis (workers' setting)")
def test_nothing_accepted_is_lost_when_a_run_dies(coalescing):
    """A run that took the waiting ids and died before resolving them (a killed worker) left
    them in place; one added again meanwhile is not dropped by a run that read the older one."""
    org = acme()
    subscribe(org, "VDC", 1)
    report(org, "esx1", ["g1", "g2"])
    g1, g2 = guest(org, "g1"), guest(org, "g2")
    taken = pending.take()  # the dead run's read: nothing resolved, nothing removed
    assert set(taken) == {g1.id, g2.id}
    subs.enqueue_resolution([g2.id], "facts")  # g2 again, after that read
    assert pending.done(taken) == 1  # g1 only: g2's newer entry stays
    assert pending.trigger_of(pending.take()[g2.id]) == "facts"
    pending.client().hset(pending._key(), str(g1.id), taken[g1.id])  # as the dead run left it
    # g1 ("registration") and g2 ("facts"), and g2 again as the follow-up of esx1's new VDC.
    assert tasks.resolve_pending.apply().get() == {"resolved": 3, "retried": 0}
    assert pending.waiting() == 0 and status(g1) == status(g2) == "valid"
