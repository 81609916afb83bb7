"""Set-based resolution (subscriptions/batch.py, issue 12 item 1): a batch costs a fixed
number of SQL statements whatever its size, and gives what per-system resolution gives."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hypervisors import ingest
from hypervisors import services as mapping
from orgs.models import ConsumerIdentity, Organization, System
from orgs.services import create_org
from sam import pki
from subscriptions import batch, tasks
from subscriptions import services as subs
from subscriptions.models import (
    Entitlement,
    EntitlementCertificate,
    EntitlementEvent,
    Pool,
    SystemCompliance,
)
from tests.scenario import GUEST_PRODUCT

pytestmark = pytest.mark.django_db(transaction=True)
_keys = itertools.count(1)


@pytest.fixture
def held(monkeypatch):
    """Resolution tasks are collected instead of run: the test runs them itself."""
    sent: list[tuple[list[int], str]] = []
    monkeypatch.setattr(tasks.resolve_systems, "delay",
                        lambda ids, trigger="heal": sent.append((sorted(ids), trigger)))
    return sent


def _org(autobind_hosts: bool = True) -> Organization:
    """A fresh org with the products of domain.md 9 (plus RHEL-2G and a physical-only SKU)."""
    org = create_org(f"O{next(_keys)}", "Batch test org")
    org.hypervisor_autobind_enabled = autobind_hosts
    org.save()
    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "RHEL guest", provided=["479"])
    subs.create_product(org, "VDC", "Virtual Datacenter", attributes={"virt_limit": "unlimited"},
                        derived="RHEL-G")
    subs.create_product(org, "RHEL-4G", "RHEL 4 guests", attributes={"virt_limit": "4"},
                        provided=["479"])
    subs.create_product(org, "RHEL-2G", "RHEL 2 guests", attributes={"virt_limit": "2"},
                        provided=["479"])
    subs.create_product(org, "RHEL", "RHEL physical", provided=["479"])
    subs.create_product(org, "RHEL-ST", "RHEL stacked", provided=["479"],
                        attributes={"virt_limit": "4", "stacking_id": "st"})
    subs.create_product(org, "RHEL-SK", "RHEL per 2 sockets", provided=["479"],
                        attributes={"sockets": "2", "stacking_id": "sk",
                                    "multi-entitlement": "yes"})
    subs.create_product(org, "RHEL-2S", "RHEL 2 sockets", provided=["479"],
                        attributes={"sockets": "2"})
    return org


_key = []


def _identities(guests: list[System]) -> None:
    """subscription-manager identities (one key pair shared: generating keys is not what these
    tests are about), so that every entitlement of these guests carries a certificate."""
    if not _key:
        _key.append(pki.new_key())
    key = _key[0]
    sealed = pki.seal_key(key)
    now = timezone.now()
    ConsumerIdentity.objects.bulk_create([ConsumerIdentity(
        system=g, sealed_key=sealed, serial=pki.new_serial(), not_after=now + timedelta(days=365),
        cert_pem=pki.pem(pki.issue_identity(g.org.key, str(g.uuid), g.name, key.public_key(), 1)))
        for g in guests])


def _guests(org: Organization, names: list[str], registered=None,
            identities: bool = True) -> list[System]:
    """Registered guests as rows written in bulk (no resolution); hosts follow the mapping.
    With ``identities``, registered by subscription-manager (entitlement certificates)."""
    now = timezone.now()
    rows = []
    for name in names:
        facts = {"virt.is_guest": "true", "virt.uuid": name}
        rows.append(System(org=org, name=name, facts=facts, installed_products=GUEST_PRODUCT,
                           registered_at=registered or now, last_checkin=now,
                           **ingest.identity(facts)))
    System.objects.bulk_create(rows)
    ids = list(System.objects.filter(org=org, name__in=names).order_by("id")
                .values_list("id", flat=True))
    ingest.refresh_current_hosts_of(org, ids, now)
    guests = list(System.objects.filter(id__in=ids).select_related("org").order_by("id"))
    if identities:
        _identities(guests)
    return guests


def _drain(held) -> None:
    """Run the collected resolution tasks (and what they enqueue) until none is left."""
    while held:
        ids, trigger = held.pop(0)
        tasks.resolve_systems(ids, trigger)


def _moved_batch(held, n: int) -> list[dict]:
    """``n`` guests on esx1 move to esx2 (both hosts entitled to VDC): the statements of the
    batch that re-resolves them, certificates revoked and issued and compliance stored."""
    org = _org()
    sub = subs.create_subscription(org, "VDC", 2)
    names = [f"{org.key.lower()}-g{i:04d}" for i in range(n)]
    esx1, _ = mapping.report_hypervisor(org, "esx1", name="esx1", guests=names)
    esx2, _ = mapping.report_hypervisor(org, "esx2", name="esx2", guests=[])
    normal = Pool.objects.get(subscription=sub, type=Pool.Type.NORMAL)
    subs.attach(org, esx1.uuid, normal.uuid)
    subs.attach(org, esx2.uuid, normal.uuid)
    guests = _guests(org, names)
    assert batch.resolve_guests([g.id for g in guests], "test").deferred == []
    from_esx1 = Pool.objects.get(requires_host=esx1)
    assert Entitlement.objects.filter(pool=from_esx1).count() == n
    before = set(EntitlementCertificate.objects.filter(system__in=guests)
                 .values_list("serial", flat=True))
    assert len(before) == n
    held.clear()

    mapping.set_guest_list(org, esx2, names)  # the newest row: esx2 is their host now
    mapping.set_guest_list(org, esx1, [])
    ids = [i for batch_ids, _ in held for i in batch_ids]  # tasks of SAM_RESOLVE_BATCH each
    trigger = held[0][1]
    assert ids == [g.id for g in guests]  # exactly the moved guests, once
    held.clear()
    with CaptureQueriesContext(connection) as queries:
        outcome = batch.resolve_guests(ids, trigger)
    assert outcome.deferred == [] and outcome.resolved == ids
    from_esx2 = Pool.objects.get(requires_host=esx2)
    assert set(Entitlement.objects.filter(system__in=guests).values_list("pool_id", flat=True)) \
        == {from_esx2.id}
    assert Entitlement.objects.filter(system__in=guests).count() == n
    from_esx1.refresh_from_db()
    from_esx2.refresh_from_db()
    assert (from_esx1.consumed, from_esx2.consumed) == (0, n)
    # A new certificate for each new entitlement (new serials), the old ones revoked with theirs.
    certs = EntitlementCertificate.objects.filter(system__in=guests)
    assert sorted(certs.values_list("entitlement__pool_id", flat=True)) == [from_esx2.id] * n
    assert not set(certs.values_list("serial", flat=True)) & before
    assert set(certs.values_list("pool_id", flat=True)) == {from_esx2.id}
    assert SystemCompliance.objects.filter(system__in=guests, status="valid").count() == n
    events = EntitlementEvent.objects.filter(org=org, trigger=trigger)
    assert events.filter(action="revoked", reason="host_mismatch").count() == n
    assert events.filter(action="attached", host_name="esx2").count() == n
    assert held == []  # nothing left for another round
    return queries.captured_queries


def test_batch_statement_count_does_not_grow_with_its_size(held):
    """With certificates on: the same statements for 10 and for 500 moved guests."""
    small = _moved_batch(held, 10)
    large = _moved_batch(held, 500)
    if connection.vendor != "postgresql":
        # SQLite: Django splits bulk INSERTs at its parameter limit (999); nothing else grows.
        small, large = ([q for q in c if not q["sql"].startswith("INSERT")] for c in (small, large))
    assert len(small) == len(large), (len(small), len(large))
    # 25 on PostgreSQL: the batch's reads, locks and writes, the stored compliance's upsert and
    # the certificates' (identities, current serials, one upsert).
    assert len(small) <= 25, [q["sql"][:80] for q in small]


def test_host_auto_attach_in_the_batch(held):
    """Guests of a host without a subscription: the batch entitles the host once (making its
    derived pool) and both guests from that pool."""
    org = _org()
    sub = subs.create_subscription(org, "VDC", 1)
    esx1, _ = mapping.report_hypervisor(org, "esx1", name="esx1", guests=["a", "b"])
    a, b = _guests(org, ["a", "b"])
    outcome = batch.resolve_guests([a.id, b.id], "test")
    assert outcome.resolved == [a.id, b.id] and outcome.deferred == []
    (host_ent,) = Entitlement.objects.filter(system=esx1)
    normal = Pool.objects.get(subscription=sub, type=Pool.Type.NORMAL)
    derived = Pool.objects.get(requires_host=esx1)
    assert host_ent.pool_id == normal.id and derived.source_entitlement_id == host_ent.id
    assert (normal.consumed, derived.consumed, derived.product.sku) == (1, 2, "RHEL-G")
    assert set(Entitlement.objects.filter(system__in=[a, b]).values_list("pool_id", flat=True)) \
        == {derived.id}
    assert EntitlementEvent.objects.get(system_uuid=esx1.uuid).reason == "host_auto_attach"


def test_stacked_host_subscription_is_left_to_per_system(held):
    org = _org()
    subs.create_subscription(org, "RHEL-ST", 2)
    esx1, _ = mapping.report_hypervisor(org, "esx1", name="esx1", guests=["a", "b"])
    a, b = _guests(org, ["a", "b"])
    outcome = batch.resolve_guests([a.id, b.id], "test")
    # a needs a stack-derived pool; b shares a's host, so it waits for a too.
    assert outcome.resolved == [] and outcome.deferred == [a.id, b.id]
    tasks.resolve_systems([a.id, b.id], "test")
    derived = Pool.objects.get(requires_host=esx1, type=Pool.Type.STACK_DERIVED)
    assert set(Entitlement.objects.filter(system__in=[a, b]).values_list("pool_id", flat=True)) \
        == {derived.id}


def _boxes(org: Organization, sockets: list[int]) -> list[System]:
    now = timezone.now()
    System.objects.bulk_create([System(
        org=org, name=f"box{n}", facts={"cpu.cpu_socket(s)": str(s)},
        installed_products=GUEST_PRODUCT, registered_at=now, last_checkin=now)
        for n, s in enumerate(sockets)])
    boxes = list(System.objects.filter(org=org, name__startswith="box").select_related("org")
                 .order_by("id"))
    _identities(boxes)
    return boxes


def test_physical_systems_in_the_batch(held):
    """Non-guests taking one unit each are decided set-based too, oldest id first, with
    certificates; the pool's quantity is respected."""
    org = _org()
    sub = subs.create_subscription(org, "RHEL", 2)
    boxes = _boxes(org, [1, 1, 1])
    outcome = batch.resolve_guests([b.id for b in boxes], "test")
    assert outcome.resolved == [b.id for b in boxes] and outcome.deferred == []
    normal = Pool.objects.get(subscription=sub, type=Pool.Type.NORMAL)
    assert normal.consumed == 2
    assert sorted(Entitlement.objects.filter(pool=normal).values_list("system_id", flat=True)) \
        == [boxes[0].id, boxes[1].id]
    assert EntitlementCertificate.objects.filter(system__in=boxes).count() == 2
    assert SystemCompliance.objects.get(system=boxes[2]).status == "invalid"


def test_socket_stacking_and_derived_pools_stay_per_system(held):
    """A multi-entitlement (socket-stacked) candidate needs units from the system's sockets,
    a virt_limit pool makes a derived pool for the host's guests: per-system resolution."""
    org = _org()
    subs.create_subscription(org, "RHEL-SK", 4)
    (box,) = _boxes(org, [4])
    assert batch.resolve_guests([box.id], "test").deferred == [box.id]
    tasks.resolve_systems([box.id], "test")
    (ent,) = Entitlement.objects.filter(system=box)
    assert ent.quantity == 2 and SystemCompliance.objects.get(system=box).status == "valid"

    org = _org()
    subs.create_subscription(org, "RHEL-4G", 1)
    (box,) = _boxes(org, [1])
    assert batch.resolve_guests([box.id], "test").deferred == [box.id]


# --- Set-based = per-system, over random mappings and catalogs -----------------------------------

SKUS = ("VDC", "RHEL-4G", "RHEL-2G", "RHEL", "RHEL-ST", "RHEL-SK", "RHEL-2S")

world = st.fixed_dictionaries({
    "subscriptions": st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 2)),
                              min_size=1, max_size=3),
    "added": st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 2)), max_size=1),
    "hosts": st.integers(1, 3),
    # per guest: host before, host after (None = not reported), registered long ago
    "guests": st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 2)),
                                 st.one_of(st.none(), st.integers(0, 2)), st.booleans()),
                       min_size=1, max_size=7),
    "autobind_hosts": st.booleans(),
    # physical systems registered by subscription-manager: sockets
    "physical": st.lists(st.integers(1, 4), max_size=3),
})


def _build(w: dict, held, path: str) -> Organization:
    """The world ``w`` in a fresh org: resolved per system, then the change (guests move, a
    subscription arrives) resolved on ``path``."""
    org = _org(w["autobind_hosts"])
    for n, (sku, quantity) in enumerate(w["subscriptions"]):
        subs.create_subscription(org, sku, quantity, contract_number=f"c{n}")
    hosts = [f"h{i}" for i in range(w["hosts"])]
    names = [f"{org.key.lower()}-{i}" for i in range(len(w["guests"]))]

    def report(column: int) -> None:
        for i, host in enumerate(hosts):
            mapping.report_hypervisor(org, host, name=host, guests=[
                names[n] for n, g in enumerate(w["guests"]) if g[column] == i])

    report(0)
    old = timezone.now() - timedelta(hours=30)
    for n, (_, _, long_ago) in enumerate(w["guests"]):
        _guests(org, [names[n]], registered=old if long_ago else None)
    now = timezone.now()
    System.objects.bulk_create([System(
        org=org, name=f"{org.key.lower()}-box{n}", facts={"cpu.cpu_socket(s)": str(sockets)},
        installed_products=GUEST_PRODUCT, registered_at=now, last_checkin=now)
        for n, sockets in enumerate(w["physical"])])
    _identities(list(System.objects.filter(org=org, name__contains="-box").select_related("org")))
    held.clear()
    ids = list(System.objects.filter(org=org).order_by("id").values_list("id", flat=True))
    with override_settings(SAM_RESOLUTION="per_system"):
        tasks.resolve_systems(ids, "setup")
        _drain(held)
    report(1)
    for n, (sku, quantity) in enumerate(w["added"]):
        subs.create_subscription(org, sku, quantity, contract_number=f"a{n}")
    with override_settings(SAM_RESOLUTION=path):
        _drain(held)
    return org


def _outcome(org: Organization) -> tuple:
    """Entitlements (each with whether its certificate states it: pool, quantity, dates),
    consumed counts and stored compliance, named so that two orgs compare. Serial values
    differ between two runs; their presence, count and what they state do not."""
    def pool_key(pool: Pool) -> tuple:
        host = pool.requires_host.name.split("-", 1)[-1] if pool.requires_host_id else ""
        return (pool.subscription.contract_number, pool.type, host)

    def certified(ent: Entitlement) -> bool:
        cert = getattr(ent, "certificate", None)
        return cert is not None and cert.system_id == ent.system_id and (
            cert.pool_id, cert.quantity, cert.start, cert.end) == (
            ent.pool_id, ent.quantity, ent.start, ent.end)

    ents = sorted((e.system.name.split("-", 1)[-1], *pool_key(e.pool), e.quantity, certified(e))
                  for e in Entitlement.objects.filter(org=org).select_related(
                      "system", "pool__subscription", "pool__requires_host", "certificate"))
    # Guests carry a certificate per entitlement, hosts (virt-who, no identity) none; none is
    # left over from a revoked entitlement.
    registered = Entitlement.objects.filter(org=org, system__identity__isnull=False).count()
    certificates = EntitlementCertificate.objects.filter(system__org=org)
    assert certificates.count() == registered == sum(1 for e in ents if e[-1])
    assert certificates.values("serial").distinct().count() == registered
    pools = sorted((*pool_key(p), p.consumed) for p in Pool.objects.filter(org=org)
                   .select_related("subscription", "requires_host"))

    def answer(a: dict) -> tuple:
        return (a["status"], a["compliant"], sorted(a["compliantProducts"]),
                sorted(a["partiallyCompliantProducts"]), sorted(a["nonCompliantProducts"]),
                sorted(a["partialStacks"]), a["compliantUntil"] is None,
                sorted(r["key"] for r in a["reasons"]),
                sorted(len(v) for v in a["compliantProducts"].values()))

    stored = sorted((c.system.name.split("-", 1)[-1], c.status, answer(c.answer))
                    for c in SystemCompliance.objects.filter(system__org=org)
                    .select_related("system"))
    return ents, pools, stored


@hsettings(max_examples=10, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(w=world)
def test_set_based_equals_per_system(held, w):
    by_batch = _outcome(_build(w, held, "batch"))
    by_system = _outcome(_build(w, held, "per_system"))
    assert by_batch == by_system
