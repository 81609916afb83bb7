"""domain.md section 9: scenarios S1-S12 as named tests (transactional: triggers fire at commit)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from hypervisors.models import GuestHostInterval
from hypervisors.services import report_hypervisor
from orgs.models import System
from sam.ids import swapped_uuid
from subscriptions import batch
from subscriptions import services as subs
from subscriptions.models import Entitlement, EntitlementEvent, Pool
from tests.scenario import (
    acme,
    ents,
    explanation,
    guest,
    host_of,
    hours_ago,
    physical,
    pools_of,
    reload,
    report,
    status,
    subscribe,
)

# Every scenario on both resolution paths (set-based batches and per-system).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("resolution_path")]


def _vdc_s1():
    org = acme()
    subscribe(org, "VDC", 2)
    esx1 = report(org, "esx1", ["g1", "g2"])
    g1 = guest(org, "g1")
    return org, esx1, g1


def test_s1_host_inheritance():
    org, esx1, g1 = _vdc_s1()
    (normal,) = pools_of("VDC", Pool.Type.NORMAL)
    host_ents = ents(esx1)
    assert [(e.pool_id, e.quantity) for e in host_ents] == [(normal.id, 1)]
    (derived,) = Pool.objects.filter(type=Pool.Type.ENTITLEMENT_DERIVED)
    assert derived.requires_host_id == esx1.id
    assert derived.quantity == -1
    assert derived.product.sku == "RHEL-G"
    assert derived.source_entitlement_id == host_ents[0].id
    assert [e.pool_id for e in ents(g1)] == [derived.id]
    assert status(g1) == "valid"
    chain = explanation(g1)
    assert chain["status"] == "valid"
    assert "esx1" in chain["message"] and "VDC" in chain["message"]
    assert [link["kind"] for link in chain["chain"]] == [
        "system", "entitlement", "pool", "host", "host_entitlement", "subscription"]


def test_s2_migration_without_guest_checkin():
    org, esx1, g1 = _vdc_s1()
    esx2 = report(org, "esx2", [])
    old_derived = Pool.objects.get(requires_host=esx1)
    report(org, "esx1", ["g2"])
    report(org, "esx2", ["g1"])
    assert host_of(g1).id == esx2.id
    new_derived = Pool.objects.get(requires_host=esx2)
    assert [e.pool_id for e in ents(g1)] == [new_derived.id]
    assert not Entitlement.objects.filter(pool=old_derived, system=g1).exists()
    (normal,) = pools_of("VDC", Pool.Type.NORMAL)
    assert [e.pool_id for e in ents(esx2)] == [normal.id]
    assert status(g1) == "valid"
    timeline = list(GuestHostInterval.objects.filter(guest_uuid="g1").order_by("started", "id")
                    .values_list("host_name", "ended"))
    assert [name for name, _ in timeline] == ["esx1", "esx2"]
    assert timeline[0][1] is not None and timeline[1][1] is None
    revoked = EntitlementEvent.objects.get(system_uuid=g1.uuid, action="revoked")
    assert revoked.reason == "host_mismatch" and revoked.host_name == "esx1"


def test_s3_exhausted_host_subscription():
    org = acme()
    subscribe(org, "VDC", 1)
    esx1 = report(org, "esx1", ["ga"])
    esx2 = report(org, "esx2", ["gb"])
    ga = guest(org, "ga")
    gb = guest(org, "gb")
    holders = [h for h in (esx1, esx2) if ents(h)]
    assert len(holders) == 1
    covered, uncovered = (ga, gb) if holders[0].id == esx1.id else (gb, ga)
    other = esx2 if holders[0].id == esx1.id else esx1
    assert status(covered) == "valid"
    assert status(uncovered) == "invalid"
    why = explanation(uncovered)
    assert why["reason"] == "pool_exhausted"
    assert why["message"] == f"no subscription left for host {other.name} (VDC: 1 of 1 used)"


def test_s4_unmapped_guest_gets_temporary_then_host():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    g3 = guest(org, "g3")
    (temporary,) = ents(g3)
    assert temporary.pool.type == Pool.Type.UNMAPPED_GUEST
    assert abs(temporary.end - (reload(g3).registered_at + timedelta(days=7))) < timedelta(seconds=1)
    compliance = subs.compliance_for(reload(g3))
    assert compliance.status == "partial"
    assert [r["key"] for r in compliance.reasons] == ["UNMAPPEDGUEST"]
    assert "temporary entitlement ends in" in explanation(g3)["message"]

    esx1 = report(org, "esx1", ["g3"])
    assert not Entitlement.objects.filter(pk=temporary.pk).exists()
    (host_ent,) = ents(esx1)
    assert host_ent.pool.type == Pool.Type.NORMAL and host_ent.pool.product.sku == "RHEL-4G"
    (g3_ent,) = ents(g3)
    assert g3_ent.pool.type == Pool.Type.ENTITLEMENT_DERIVED
    assert g3_ent.pool.requires_host_id == esx1.id and g3_ent.pool.quantity == 4
    assert status(g3) == "valid"


def test_s5_window_passed_treated_as_physical():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    g3 = guest(org, "g3", registered_at=hours_ago(25))
    (ent,) = ents(g3)
    assert ent.pool.type == Pool.Type.NORMAL and ent.quantity == 1
    assert status(g3) == "valid"
    assert explanation(g3)["message"].startswith(
        "covered as a physical system: not reported by any hypervisor, temporary window passed")

    # With the NORMAL pool used up, the next such guest is invalid and says why.
    g4 = guest(org, "g4", registered_at=hours_ago(25))
    assert ents(g4) == []
    assert status(g4) == "invalid"
    why = explanation(g4)
    assert "not reported by any hypervisor, temporary window passed" in why["message"]
    assert "pool exhausted (1 of 1 used)" in why["message"]
    assert why["reason"] == "pool_exhausted"


def test_s6_virt_limit_caps_guests_per_host():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    names = [f"v{i}" for i in range(5)]
    esx1 = report(org, "esx1", names)
    guests = [guest(org, name) for name in names]
    derived = Pool.objects.get(requires_host=esx1)
    assert derived.quantity == 4 and derived.consumed == 4
    statuses = sorted(status(g) for g in guests)
    assert statuses == ["invalid", "valid", "valid", "valid", "valid"]
    (fifth,) = [g for g in guests if status(g) == "invalid"]
    why = explanation(fifth)
    assert why["message"] == "pool exhausted (4 of 4 used)"
    assert why["reason"] == "pool_exhausted"

    # "unless another subscription can cover it": a second RHEL-4G gives a normal unit.
    subscribe(org, "RHEL-4G", 1)
    assert status(fifth) == "valid"


def test_s7_omitted_guest_keeps_entitlement():
    org, esx1, g1 = _vdc_s1()
    before = [e.id for e in ents(g1)]
    events_before = EntitlementEvent.objects.filter(action="revoked").count()
    report(org, "esx1", [])
    g1 = reload(g1)
    assert g1.current_host is None
    assert g1.host_unknown_since is not None
    assert [e.id for e in ents(g1)] == before
    assert EntitlementEvent.objects.filter(action="revoked").count() == events_before
    assert status(g1) == "valid"
    assert "host unknown since" in explanation(g1)["message"]


def test_s8_unchanged_report_changes_nothing():
    org, esx1, g1 = _vdc_s1()
    resolved = []
    original, original_batch = subs.resolve_system, batch.resolve_guests

    def spy(system_id, trigger="heal", queued=frozenset()):
        resolved.append(system_id)
        return original(system_id, trigger, queued)

    def batch_spy(system_ids, trigger):
        resolved.extend(system_ids)
        return original_batch(system_ids, trigger)

    subs.resolve_system, batch.resolve_guests = spy, batch_spy
    try:
        updated = {s.pk: s.updated for s in System.objects.all()}
        guest_rows = list(esx1.guest_ids.values_list("id", "updated"))
        _, result = report_hypervisor(org, "esx1", name="esx1", guests=["g1", "g2"])
    finally:
        subs.resolve_system, batch.resolve_guests = original, original_batch
    assert result == "unchanged"
    assert resolved == []
    assert list(esx1.guest_ids.values_list("id", "updated")) == guest_rows
    after = {s.pk: s.updated for s in System.objects.all()}
    changed = {pk for pk in after if after[pk] != updated[pk]}
    assert changed <= {esx1.pk}  # only the check-in time of the reporting host


def test_s9_byte_swapped_uuid_matches():
    org = acme()
    subscribe(org, "VDC", 1)
    real = "4c4c4544-0053-4b10-8032-b4c04f4a4d31"
    esx1 = report(org, "esx1", [swapped_uuid(real).upper()])
    g1 = guest(org, "g1", uuid=real)
    assert host_of(g1).id == esx1.id
    assert status(g1) == "valid"


def test_s10_host_entitlement_removed():
    org, esx1, g1 = _vdc_s1()
    (host_ent,) = ents(esx1)
    # The admin turned off host auto-attach, so resolution cannot simply re-attach the host.
    org.hypervisor_autobind_enabled = False
    org.save()
    subs.remove_entitlement(org, host_ent.uuid)
    assert not Pool.objects.filter(requires_host=esx1).exists()
    assert ents(g1) == []
    assert status(g1) == "invalid"
    assert explanation(g1)["reason"] == "host_not_entitled"
    revoked = EntitlementEvent.objects.get(system_uuid=g1.uuid, action="revoked")
    assert revoked.reason == "source_revoked"


def test_s10_host_entitlement_removed_then_reattached_by_heal():
    """With host auto-attach on, the re-resolved guest brings its host a subscription again."""
    org, esx1, g1 = _vdc_s1()
    (host_ent,) = ents(esx1)
    subs.remove_entitlement(org, host_ent.uuid)
    assert [e.uuid for e in ents(esx1)] != [host_ent.uuid]
    assert status(g1) == "valid"


@pytest.mark.postgres_only("50 threads attaching at once: needs PostgreSQL row locks (SQLite "
                           "serialises every writer)")
def test_s11_concurrent_guests_single_host_attach():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    names = [f"c{i:02d}" for i in range(50)]
    esx1 = report(org, "esx1", names)
    org.autobind_enabled = False  # register without resolving, then resolve all at once
    org.save()
    guests = [guest(org, name) for name in names]
    org.autobind_enabled = True
    org.save()
    assert not Entitlement.objects.exists()

    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def worker(chunk):
        try:
            barrier.wait()
            for g in chunk:
                subs.resolve_system(g.id, "test")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(guests[i::10],)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Entitlement.objects.filter(system=esx1).count() == 1
    derived = Pool.objects.get(requires_host=esx1)
    assert Entitlement.objects.filter(pool=derived).count() == 4
    assert Entitlement.objects.filter(system__is_guest=True).count() == 4
    assert Pool.objects.get(subscription__product__sku="RHEL-4G", type="NORMAL").consumed == 1


def test_s12_same_hardware_registered_then_reported():
    org = acme()
    box = physical(org, "box1", facts={"dmi.system.uuid": "ABCDEF00-1111-2222-3333-444455556666"},
                   products=[])
    reported = report(org, "abcdef00-1111-2222-3333-444455556666", ["gx"])
    assert reported.id == box.id
    assert System.objects.count() == 1
    assert reload(box).type == System.Type.HYPERVISOR


def test_s12_reported_then_registered():
    org = acme()
    reported = report(org, "ABCDEF00-1111-2222-3333-444455556666", ["gx"])
    box = physical(org, "box1", facts={"dmi.system.uuid": "abcdef00-1111-2222-3333-444455556666"},
                   products=[])
    assert box.id == reported.id
    assert System.objects.count() == 1
    assert reload(box).type == System.Type.HYPERVISOR


def test_s12_reported_by_hardware_uuid_after_id_change():
    """virt-who switched hypervisor_id from uuid to hostname: matched by dmi.system.uuid."""
    org = acme()
    first = report(org, "hw-uuid-1", ["gx"], facts={"dmi.system.uuid": "HW-UUID-1"})
    again = report(org, "esx-host.example.com", ["gx"], facts={"dmi.system.uuid": "hw-uuid-1"})
    assert again.id == first.id
    assert reload(again).hypervisor_id == "esx-host.example.com"
    assert System.objects.count() == 1


def test_expired_temporary_entitlement_swept():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    g3 = guest(org, "g3")
    (temporary,) = ents(g3)
    Entitlement.objects.filter(pk=temporary.pk).update(end=timezone.now() - timedelta(minutes=1))
    assert subs.expire_unmapped_entitlements() == 1
    assert not Entitlement.objects.filter(pk=temporary.pk).exists()
