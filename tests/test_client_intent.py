"""Client intent (consumer-api.md, issue 11): a consumer that removes its own entitlements is not
re-attached by sam's own triggers -- the nightly heal (the real sweep, in a real worker), a
host's auto-attach for another guest, a host's entitlement changing -- only by its own attach
or auto-heal (``entitle_date``), or once its inputs change (host, installed products, a new
pool). Driven by PyPI ``rhsm==1.19.2`` against ``manage.py serve`` (tests/test_consumers.py).
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from hypervisors import services as mapping
from orgs.models import System
from subscriptions import batch, tasks
from subscriptions import services as subs
from subscriptions.models import Entitlement, Pool
from tests import rhsm_helper, workers
from tests import test_consumers as base
from tests.test_consumers import RHEL, as_consumer, facts, register

org = base.org  # org ACME, tasks sent to the broker

pytestmark = rhsm_helper.WIRE_MARKS



GUEST_1 = "4c4c4544-0011-0022-0033-0000000000a1"
GUEST_2 = "4c4c4544-0011-0022-0033-0000000000a2"


def _nightly_heal() -> None:
    """The beat's nightly sweep, run by the worker, and every resolution it enqueues."""
    tasks.heal_all_orgs.delay()
    workers.wait_idle()


def _skus(uuid) -> list[str]:
    return sorted(Entitlement.objects.filter(system__uuid=uuid)
                  .values_list("pool__product__sku", flat=True))


def _holds(uuid) -> bool:
    return System.objects.get(uuid=uuid).self_removed_at is not None


def test_remove_all_stays_uncovered_through_heal_until_entitle_date(org, tmp_path):
    subs.create_subscription(org, "RHEL-4G", 2)
    consumer = register(name="phys-intent")
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)
    assert len(conn.bind(uuid)) == 1

    assert conn.unbindAll(uuid) == {"deletedRecords": 1}  # remove --all
    assert _holds(uuid)
    _nightly_heal()
    assert _skus(uuid) == [] and conn.getCompliance(uuid)["status"] == "invalid"
    # A pool that existed before, changed by nothing: still no reason to attach.
    subs.heal_org(org)
    workers.wait_idle()
    assert _skus(uuid) == []

    # rhsmcertd-worker --autoheal: the client's own ask attaches and ends the intent.
    tomorrow = timezone.now() + timedelta(days=1)
    assert len(conn.bind(uuid, entitle_date=tomorrow)) == 1
    assert _skus(uuid) == ["RHEL-4G"] and not _holds(uuid)
    assert conn.getCompliance(uuid)["status"] == "valid"

    # remove --pool is a removal too; attach --pool ends it.
    pool = Pool.objects.get(product__sku="RHEL-4G", type="NORMAL")
    conn.unbindByPoolId(uuid, str(pool.uuid))
    assert _holds(uuid)
    _nightly_heal()
    assert _skus(uuid) == []
    conn.bindByEntitlementPool(uuid, str(pool.uuid))
    assert not _holds(uuid)

    # A change of its inputs ends it: installed products (the worker re-resolves) ...
    conn.unbindAll(uuid)
    _nightly_heal()
    assert _skus(uuid) == []
    conn.updateConsumer(uuid, installed_products=[*RHEL, {"productId": "69",
                                                            "productName": "RHEL Server"}])
    workers.wait_idle()
    assert _skus(uuid) == ["RHEL-4G"] and not _holds(uuid)
    # ... and a pool made for it afterwards.
    conn.unbindAll(uuid)
    _nightly_heal()
    assert _skus(uuid) == []
    subs.create_subscription(org, "RHEL-4G", 1)
    workers.wait_idle()
    assert _skus(uuid) == ["RHEL-4G"] and not _holds(uuid)


def test_guest_stays_uncovered_through_host_attach_until_entitle_date(org, tmp_path):
    subs.create_subscription(org, "VDC", 2)
    host = mapping.report_hypervisor(org, "esx-i1", "esx-i1", guests=[{"guestId": GUEST_1}])[0]
    one = register(name="vm-i1", facts=facts(**{"virt.is_guest": "true", "virt.uuid": GUEST_1}))
    uuid = one["uuid"]
    conn = as_consumer(tmp_path, one)
    conn.bind(uuid)
    assert _skus(uuid) == ["RHEL-G"]
    assert conn.unbindAll(uuid) == {"deletedRecords": 1}

    # The nightly heal (guests: the set-based batch, deferred to per-system resolution).
    _nightly_heal()
    assert _skus(uuid) == []
    # The host loses its subscription (an admin removes it): its guests are re-resolved.
    [host_ent] = Entitlement.objects.filter(system=host)
    subs.remove_entitlement(org, host_ent.uuid)
    workers.wait_idle()
    assert _skus(uuid) == [] and not Entitlement.objects.filter(system=host).exists()
    # Another guest of the host auto-attaches: the host is entitled again (host auto-attach)
    # and its guests re-resolved; this one stays as it chose.
    mapping.report_hypervisor(org, "esx-i1", "esx-i1",
                              guests=[{"guestId": GUEST_1}, {"guestId": GUEST_2}])
    two = register(name="vm-i2", facts=facts(**{"virt.is_guest": "true", "virt.uuid": GUEST_2}))
    as_consumer(tmp_path, two, "-2").bind(two["uuid"])
    workers.wait_idle()
    assert Entitlement.objects.filter(system=host).count() == 1
    assert _skus(two["uuid"]) == ["RHEL-G"] and _skus(uuid) == [] and _holds(uuid)
    # The set-based path decides the same (it leaves the guest to per-system resolution).
    outcome = batch.resolve_guests([System.objects.get(uuid=uuid).id], "heal")
    assert outcome.resolved == [] and _skus(uuid) == []

    # rhsmcertd's auto-heal for tomorrow: the client asked.
    assert len(conn.bind(uuid, entitle_date=timezone.now() + timedelta(days=1))) == 1
    assert _skus(uuid) == ["RHEL-G"] and not _holds(uuid)


def test_host_change_ends_the_intent(org, tmp_path):
    subs.create_subscription(org, "VDC", 2)
    mapping.report_hypervisor(org, "esx-a", "esx-a", guests=[{"guestId": GUEST_1}])
    mapping.report_hypervisor(org, "esx-b", "esx-b", guests=[])
    one = register(name="vm-move", facts=facts(**{"virt.is_guest": "true", "virt.uuid": GUEST_1}))
    uuid = one["uuid"]
    conn = as_consumer(tmp_path, one)
    conn.bind(uuid)
    conn.unbindAll(uuid)
    _nightly_heal()
    assert _skus(uuid) == [] and _holds(uuid)

    # virt-who moves it: a new host is a new input; the worker covers it through esx-b.
    mapping.report_hypervisor(org, "esx-a", "esx-a", guests=[])
    mapping.report_hypervisor(org, "esx-b", "esx-b", guests=[{"guestId": GUEST_1}])
    workers.wait_idle()
    guest = System.objects.select_related("current_host").get(uuid=uuid)
    assert guest.current_host.name == "esx-b" and guest.self_removed_at is None
    [ent] = Entitlement.objects.filter(system=guest).select_related("pool")
    assert ent.pool.requires_host_id == guest.current_host_id
    assert conn.getCompliance(uuid)["status"] == "valid"
