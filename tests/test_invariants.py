"""Invariants enforced by the database itself, whatever code path writes."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from orgs.models import System
from subscriptions.models import Entitlement, Pool
from tests.factories import OrganizationFactory, SystemFactory
from tests.scenario import acme, guest, physical, report, subscribe

pytestmark = pytest.mark.django_db


def test_consumed_above_quantity_is_rejected_by_the_database():
    org = acme()
    subscribe(org, "RHEL-4G", 2)
    pool = Pool.objects.get(type=Pool.Type.NORMAL)
    with pytest.raises(IntegrityError), transaction.atomic():
        Pool.objects.filter(pk=pool.pk).update(consumed=F("quantity") + 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        with connection.cursor() as cursor:  # raw SQL, not only the ORM
            cursor.execute(f"UPDATE {Pool._meta.db_table} SET consumed = 3 WHERE id = %s", [pool.pk])
    assert Pool.objects.get(pk=pool.pk).consumed == 0


def test_unlimited_pool_has_no_bound():
    org = acme()
    subscribe(org, "VDC", -1)
    pool = Pool.objects.get(type=Pool.Type.NORMAL)
    assert pool.quantity == -1
    Pool.objects.filter(pk=pool.pk).update(consumed=10_000)
    assert Pool.objects.get(pk=pool.pk).consumed == 10_000


def test_hypervisor_id_unique_per_org():
    org = OrganizationFactory()
    SystemFactory(org=org, hypervisor_id="abc")
    with pytest.raises(IntegrityError), transaction.atomic():
        SystemFactory(org=org, hypervisor_id="abc")
    SystemFactory(org=OrganizationFactory(), hypervisor_id="abc")  # another org may
    SystemFactory(org=org, hypervisor_id=None)
    SystemFactory(org=org, hypervisor_id=None)
    assert System.objects.filter(hypervisor_id="abc").count() == 2


def test_one_entitlement_per_system_and_pool_unless_multi():
    org = acme()
    subscribe(org, "RHEL-4G", 5)
    box = physical(org, "box")
    pool = Pool.objects.get(type=Pool.Type.NORMAL)
    now = timezone.now()
    Entitlement.objects.create(org=org, system=box, pool=pool, start=now, end=pool.end)
    with pytest.raises(IntegrityError), transaction.atomic():
        Entitlement.objects.create(org=org, system=box, pool=pool, start=now, end=pool.end)
    Entitlement.objects.create(org=org, system=box, pool=pool, start=now, end=pool.end,
                               multi_entitlement=True)


@pytest.mark.django_db(transaction=True)
def test_deleting_source_entitlement_deletes_derived_pool_and_guest_entitlements():
    org = acme()
    subscribe(org, "VDC", 1)
    esx1 = report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    host_ent = Entitlement.objects.get(system=esx1)
    derived = Pool.objects.get(source_entitlement=host_ent)
    assert Entitlement.objects.filter(system=g1, pool=derived).exists()
    host_ent.delete()  # the cascade exists in the schema, not only in the services
    assert not Pool.objects.filter(pk=derived.pk).exists()
    assert not Entitlement.objects.filter(system=g1).exists()
