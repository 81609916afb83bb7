"""Triggers of domain.md 6 and the engine rules around them (transactional: tasks run at commit)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from hypervisors import services as mapping
from hypervisors.models import GuestId
from orgs.models import Organization, System
from sam import locks
from sam.celery import app as celery_app
from subscriptions import services as subs
from subscriptions import tasks
from subscriptions.models import EntitlementEvent, Pool
from tests.scenario import (
    acme,
    ents,
    explanation,
    guest,
    host_of,
    hours_ago,
    physical,
    reload,
    report,
    status,
    subscribe,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_new_subscription_resolves_waiting_systems():
    org = acme()
    box = physical(org, "box")
    assert status(box) == "invalid"
    assert explanation(box)["reason"] == "no_subscription"
    subscribe(org, "RHEL-4G", 1)
    assert status(box) == "valid"


def test_reduced_quantity_revokes_newest_and_logs():
    org = acme()
    sub = subscribe(org, "RHEL-4G", 3)
    boxes = [physical(org, f"box{i}") for i in range(3)]
    assert all(status(b) == "valid" for b in boxes)
    subs.update_subscription(org, sub.uuid, quantity=2)
    pool = Pool.objects.get(type=Pool.Type.NORMAL)
    assert pool.quantity == 2 and pool.consumed == 2
    assert [status(b) for b in boxes] == ["valid", "valid", "invalid"]
    event = EntitlementEvent.objects.get(action="revoked")
    assert event.system_uuid == boxes[2].uuid and event.reason == "subscription_reduced"


def test_deleted_subscription_revokes_host_and_guests():
    org = acme()
    sub = subscribe(org, "VDC", 1)
    esx1 = report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    assert status(g1) == "valid"
    subs.delete_subscription(org, sub.uuid)
    assert not Pool.objects.exists()
    assert ents(esx1) == [] and ents(g1) == []
    assert status(g1) == "invalid"
    revoked = set(EntitlementEvent.objects.filter(action="revoked")
                  .values_list("system_uuid", "reason"))
    assert revoked == {(esx1.uuid, "subscription_deleted"), (g1.uuid, "subscription_deleted")}


def test_expired_subscription_sweep_revokes():
    org = acme()
    sub = subscribe(org, "RHEL-4G", 1)
    box = physical(org, "box")
    assert status(box) == "valid"
    past = timezone.now() - timedelta(minutes=1)
    Pool.objects.filter(subscription=sub).update(end=past)
    assert tasks.expire_subscriptions() == 1
    assert ents(box) == []
    assert explanation(box)["reason"] == "no_subscription"


def test_periodic_sweeps_do_not_overlap():
    assert connection.vendor == "postgresql"
    db = connection.settings_dict
    other = psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                            user=db["USER"], password=db["PASSWORD"] or None, dbname=db["NAME"],
                            autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [locks.SWEEP, locks.SWEEP_EXPIRE_UNMAPPED])
        assert tasks.expire_unmapped_entitlements() is None  # another run holds it: skipped
        other.execute("SELECT pg_advisory_unlock(%s, %s)", [locks.SWEEP, locks.SWEEP_EXPIRE_UNMAPPED])
        assert tasks.expire_unmapped_entitlements() == 0
    finally:
        other.close()


def test_beat_schedules_the_sweeps():
    import hypervisors.tasks  # noqa: F401  (workers autodiscover these; here import them)

    names = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert names == {"subscriptions.tasks.expire_unmapped_entitlements",
                     "subscriptions.tasks.expire_subscriptions", "subscriptions.tasks.heal_all_orgs",
                     "hypervisors.tasks.requeue_reports", "hypervisors.tasks.prune_history",
                     "subscriptions.tasks.record_coverage_snapshots"}
    assert names <= set(celery_app.tasks)


def test_heal_all_orgs_resolves_everything():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    Organization.objects.filter(pk=org.pk).update(autobind_enabled=False)
    box = physical(org, "box")
    assert ents(box) == []
    Organization.objects.filter(pk=org.pk).update(autobind_enabled=True)
    assert tasks.heal_all_orgs() >= 1
    assert status(box) == "valid"


def test_installed_products_change_resolves_system():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    box = physical(org, "box", products=[])
    assert ents(box) == []
    mapping.update_system(org, box.uuid, installed_products=[{"productId": "479"}])
    assert status(box) == "valid"


def test_resolution_is_idempotent():
    org = acme()
    subscribe(org, "VDC", 1)
    report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    events = EntitlementEvent.objects.count()
    result = subs.resolve_system(g1.id, "test")
    assert (result.attached, result.revoked) == (0, 0)
    assert EntitlementEvent.objects.count() == events


def test_manual_host_attach_covers_guests():
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    subscribe(org, "VDC", 1)
    esx1 = report(org, "esx1", ["g1", "g2"])
    g1, g2 = guest(org, "g1"), guest(org, "g2")
    assert status(g1) == status(g2) == "invalid"
    assert explanation(g1)["reason"] == "host_not_entitled"
    normal = Pool.objects.get(type=Pool.Type.NORMAL)
    subs.attach(org, esx1.uuid, normal.uuid)
    assert status(g1) == status(g2) == "valid"
    trigger = EntitlementEvent.objects.filter(system_uuid=g1.uuid, action="attached").get().trigger
    assert trigger == "host_entitlement"


def test_deleting_host_moves_guest_to_other_reporting_host():
    org = acme()
    subscribe(org, "VDC", 2)
    esx2 = report(org, "esx2", ["g1"])
    esx1 = report(org, "esx1", ["g1"])  # newer row: esx1 is the current host
    g1 = guest(org, "g1")
    assert host_of(g1).id == esx1.id
    assert GuestId.objects.filter(guest_uuid="g1").count() == 2  # the conflict is kept
    mapping.delete_system(org, esx1.uuid)
    assert host_of(g1).id == esx2.id
    assert [e.pool.requires_host_id for e in ents(g1)] == [esx2.id]
    assert not System.objects.filter(pk=esx1.pk).exists()


def test_deleting_last_host_leaves_guest_host_unknown():
    org = acme()
    subscribe(org, "VDC", 1)
    esx1 = report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    mapping.delete_system(org, esx1.uuid)
    g1 = reload(g1)
    assert g1.current_host is None and g1.host_unknown_since is not None
    assert Pool.objects.get(type=Pool.Type.NORMAL).consumed == 0


def test_socket_stacking_for_physical_systems():
    org = acme()
    subs.create_product(org, "PHYS", "RHEL physical", provided=["479"], attributes={
        "physical_only": "true", "stacking_id": "rhel", "sockets": "2", "multi-entitlement": "yes"})
    subscribe(org, "PHYS", 3)
    big = physical(org, "big", facts={"cpu.cpu_socket(s)": "4"})
    (ent,) = ents(big)
    assert ent.quantity == 2 and status(big) == "valid"
    huge = physical(org, "huge", facts={"cpu.cpu_socket(s)": "8"})
    (short,) = ents(huge)
    assert short.quantity == 1  # only one unit left
    compliance = subs.compliance_for(reload(huge))
    assert compliance.status == "partial"
    assert {r["key"] for r in compliance.reasons} == {"SOCKETS"}
    g = guest(org, "g-phys", registered_at=hours_ago(30))
    assert ents(g) == []  # physical_only: guests may not use it
    assert explanation(g)["reason"] in {"physical_only", "pool_exhausted"}


def test_stacked_vdc_on_hypervisor_gives_stack_derived_pool():
    org = acme()
    subs.create_product(org, "VDC-S", "VDC stacked", derived="RHEL-G", attributes={
        "virt_limit": "unlimited", "stacking_id": "vdc", "sockets": "2", "multi-entitlement": "yes"})
    subscribe(org, "VDC-S", 4)
    esx1, _ = mapping.report_hypervisor(org, "esx1", name="esx1", guests=["g1"],
                                        facts={"cpu.cpu_socket(s)": "4"})
    g1 = guest(org, "g1")
    (host_ent,) = ents(esx1)
    assert host_ent.quantity == 2
    stack_pool = Pool.objects.get(type=Pool.Type.STACK_DERIVED)
    assert stack_pool.requires_host_id == esx1.id and stack_pool.source_stack_id == "vdc"
    assert status(g1) == "valid"
    assert status(esx1) == "valid"
    org.hypervisor_autobind_enabled = False
    org.save()
    subs.remove_entitlement(org, host_ent.uuid)
    assert not Pool.objects.filter(type=Pool.Type.STACK_DERIVED).exists()
    assert status(g1) == "invalid"


def test_org_window_setting_extends_temporary_eligibility():
    org = acme()
    org.unmapped_window = timedelta(hours=48)
    org.unmapped_lifetime = timedelta(days=10)
    org.save()
    subscribe(org, "RHEL-4G", 1)
    g = guest(org, "late", registered_at=hours_ago(30))
    (ent,) = ents(g)
    assert ent.pool.type == Pool.Type.UNMAPPED_GUEST
    assert abs(ent.end - (reload(g).registered_at + timedelta(days=10))) < timedelta(seconds=1)


def test_simple_content_access_keeps_the_accounting():
    """An org in SCA: sam still attaches and accounts (domain.md 7); only the wire says
    ``disabled`` to its clients (tests/test_content_access.py)."""
    org = acme()
    org.content_access_mode = Organization.ContentAccess.SCA
    org.save()
    subscribe(org, "RHEL-4G", 1)
    box = physical(org, "box")
    assert [e.pool.product.sku for e in ents(box)] == ["RHEL-4G"]
    assert status(box) == "valid"


def test_attribute_change_refreshes_current_host():
    org = acme()
    subscribe(org, "VDC", 2)
    esx1 = report(org, "esx1", [{"guestId": "g1", "attributes": {"active": "1"}}])
    esx2 = report(org, "esx2", [{"guestId": "g1", "attributes": {"active": "1"}}])
    g1 = guest(org, "g1")
    assert host_of(g1).id == esx2.id
    # esx1 re-reports g1 with other attributes: its row is rewritten, so it is newest.
    report(org, "esx1", [{"guestId": "G1", "attributes": {"active": "0"}}])
    assert host_of(g1).id == esx1.id
    assert [e.pool.requires_host_id for e in ents(g1)] == [esx1.id]
