"""Importing manifests (subscriptions/manifest/importer.py): every real file of
../shared/manifests/ with the subscriptions and pools SOURCES.md lists, the conflicts, the
re-import that reconciles, the quantity drop of a re-signed copy, delete, history."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from orgs.services import create_org
from subscriptions import services as subs
from subscriptions import tasks
from subscriptions.manifest import importer
from subscriptions.models import (
    EntitlementEvent,
    ManifestImport,
    Pool,
    Product,
    Subscription,
    UpstreamDistributor,
)
from tests import manifests as m
from tests.manifests import trust_redhat  # noqa: F401 - fixture
from tests.scenario import ents, guest, physical, report, status

pytestmark = pytest.mark.django_db(transaction=True)

SIG = importer.SIGNATURE_CONFLICT
# SOURCES.md: the pools Candlepin's standalone rules give at each manifest's export time.
EXPECTED = {
    "fam-manifest_foreman-ansible-modules.zip": [("NORMAL", "MCT3718", 1)],
    "robottelo-expired-manifest-2022-01.zip": [("NORMAL", "MCT3691", 100), ("NORMAL", "MCT3718", 10)],
    "robottelo-expired-manifest-2023-03.zip": [
        ("NORMAL", "ES0113909", 100), ("NORMAL", "MCT3694F3", 1), ("NORMAL", "MCT3718", 1),
        ("UNMAPPED_GUEST", "ES0113909", -1)],
    **{name: [("NORMAL", "RH2262474", 1), ("UNMAPPED_GUEST", "RH2262474", 100)] for name in m.MODIFIED},
    "katello-legacy-fake-manifest-2011-11.zip": [("NORMAL", "rand-66393", 30), ("NORMAL", "rand-99053", 20)],
    **{name: [("NORMAL", "NATURE", 30), ("NORMAL", "ZOO", 20)] for name in m.UNKNOWN_SIGNER[1:4]},
    "katello-legacy-fake-manifest-syncable-without-nature-2012-05.zip": [("NORMAL", "ZOO", 20)],
}


def pools(org) -> list[tuple[str, str, int]]:
    return sorted(Pool.objects.filter(org=org).values_list("type", "product__sku", "quantity"))


def nothing_stored(org) -> bool:
    return not (Subscription.objects.filter(org=org).exists() or Pool.objects.filter(org=org).exists()
                or UpstreamDistributor.objects.filter(org=org).exists())


def do_import(org, name: str, *force: str, **kwargs) -> ManifestImport:
    kwargs.setdefault("file_name", name)
    return importer.import_manifest(org, m.data(name), force=force, **kwargs)


@pytest.fixture
def org():
    return create_org("ACME", "ACME Corp")


@pytest.mark.parametrize("name", m.ALL)
def test_every_shared_manifest_imports_with_the_listed_pools(name, org, trust_redhat):  # noqa: F811
    valid = name in m.VALID
    if not valid:  # the signature is a conflict an admin may override by name
        with pytest.raises(importer.ManifestConflict) as exc, m.at_export(name):
            do_import(org, name)
        assert exc.value.keys == [SIG]
        assert nothing_stored(org)
        failure = ManifestImport.objects.get(org=org)
        assert (failure.status, failure.signature) == ("FAILURE", "invalid")
        assert "SIGNATURE_CONFLICT" in failure.message
    with m.at_export(name):
        record = do_import(org, name, *([] if valid else [SIG]))
    assert record.status == "SUCCESS", record.message
    assert record.signature == ("valid" if valid else "invalid")
    assert [c["key"] for c in record.conflicts] == ([] if valid else [SIG])
    assert pools(org) == sorted(EXPECTED[name])
    subscriptions = Subscription.objects.filter(org=org)
    assert subscriptions.count() == record.counts["entitlements"] == record.counts["created"]
    assert all(s.managed and s.upstream_pool_id and s.upstream_entitlement_id for s in subscriptions)
    upstream = UpstreamDistributor.objects.get(org=org)
    assert upstream.manifest_created == m.created(name)


def test_quantity_is_not_multiplied_and_the_unlimited_bonus_pool(org, trust_redhat):  # noqa: F811
    name = "robottelo-expired-manifest-2023-03.zip"
    with m.at_export(name):
        do_import(org, name)
    employee = Subscription.objects.get(org=org, product__sku="ES0113909")
    assert employee.product.attributes["instance_multiplier"] == "2"
    assert (employee.quantity, Pool.objects.get(subscription=employee, type="NORMAL").quantity) == (100, 100)
    bonus = Pool.objects.get(subscription=employee, type="UNMAPPED_GUEST")
    assert (bonus.quantity, bonus.virt_only, bonus.unmapped_guests_only) == (-1, True, True)
    assert employee.product.provided_products.count() == 302
    upstream = UpstreamDistributor.objects.get(org=org)
    assert (upstream.name, upstream.owner_key, upstream.content_access_mode, upstream.id_cert_serial) == (
        "Spartan-LAB-Manifest", "11369109", "org_environment", "8671431036770040524")
    assert upstream.id_cert_expires.isoformat() == "2023-11-13T13:22:24+00:00"
    # The contract number is not a key: three entitlements share one.
    assert set(Subscription.objects.filter(org=org).values_list("contract_number", flat=True)) == {"12856739"}


def test_ended_subscriptions_import_as_a_warning(org, trust_redhat):  # noqa: F811
    record = do_import(org, "fam-manifest_foreman-ansible-modules.zip")  # today: ended in 2019
    assert record.status == "SUCCESS_WITH_WARNING"
    assert record.message == "No active subscriptions found in the file."
    assert record.counts["ended"] == 1 and not Pool.objects.filter(org=org).exists()
    assert UpstreamDistributor.objects.filter(org=org).exists()


def test_locally_created_subscriptions_are_never_touched(org, trust_redhat):  # noqa: F811
    subs.create_product(org, "LOCAL", "Local product")
    local = subs.create_subscription(org, "LOCAL", 5)
    name = "katello-manifest_small.zip"
    with m.at_export(name):
        do_import(org, name, SIG)
    importer.delete_manifest(org)
    assert Subscription.objects.filter(org=org).get() == local
    assert Pool.objects.get(subscription=local).quantity == 5


def test_manifest_subscriptions_are_read_only(org, trust_redhat):  # noqa: F811
    name = "katello-manifest_small_modified-2017.zip"  # active until 2038
    do_import(org, name, SIG)
    sub = Subscription.objects.get(org=org)
    for change in (lambda: subs.update_subscription(org, sub.uuid, quantity=5),
                   lambda: subs.delete_subscription(org, sub.uuid)):
        with pytest.raises(ValidationError) as exc:
            change()
        assert exc.value.code == "manifest_managed"
    assert Subscription.objects.get(org=org).quantity == 1


# --- Conflicts ----------------------------------------------------------------------------------

def test_force_names_are_checked():
    assert importer.parse_force(["MANIFEST_SAME", "signature_conflict,DISTRIBUTOR_CONFLICT"]) == {
        "MANIFEST_SAME", SIG, "DISTRIBUTOR_CONFLICT"}
    assert importer.parse_force(["true"]) == {"MANIFEST_OLD"} and importer.parse_force(["false"]) == set()
    with pytest.raises(ValidationError):
        importer.parse_force(["EVERYTHING"])


def test_older_manifest_is_manifest_old(org):
    newer, older = ("katello-legacy-fake-manifest-syncable-without-nature-2012-05.zip",
                    "katello-legacy-fake-manifest-syncable-2012-05.zip")
    with m.at_export(newer):
        do_import(org, newer, SIG)
        with pytest.raises(importer.ManifestConflict) as exc:
            do_import(org, older, SIG)
    assert exc.value.keys == ["MANIFEST_OLD"]
    record = exc.value.record
    assert record.conflicts == [
        {"key": SIG, "message": record.conflicts[0]["message"], "forced": True},
        {"key": "MANIFEST_OLD", "message": "Import is older than existing data.", "forced": False}]
    assert pools(org) == [("NORMAL", "ZOO", 20)]  # unchanged
    with m.at_export(newer):
        do_import(org, older, SIG, "true")  # Candlepin's force=true is MANIFEST_OLD
    assert pools(org) == [("NORMAL", "NATURE", 30), ("NORMAL", "ZOO", 20)]


def test_other_distributor_is_distributor_conflict_reported_with_the_others(org):
    first, second = ("katello-legacy-fake-manifest-syncable-2012-04.zip",
                     "katello-legacy-fake-manifest-syncable-2012-01.zip")
    with m.at_export(first):
        do_import(org, first, SIG)
        with pytest.raises(importer.ManifestConflict) as exc:
            do_import(org, second, SIG)
        assert exc.value.keys == ["MANIFEST_OLD", "DISTRIBUTOR_CONFLICT"]  # together, one answer
        with pytest.raises(importer.ManifestConflict) as exc:
            do_import(org, second, SIG, "MANIFEST_OLD")
        assert exc.value.keys == ["DISTRIBUTOR_CONFLICT"]
        record = do_import(org, second, SIG, "MANIFEST_OLD", "DISTRIBUTOR_CONFLICT")
    assert record.status == "SUCCESS"
    assert UpstreamDistributor.objects.get(org=org).uuid == "51d47039-a0c6-4daa-92dc-26def426e184"


def test_a_distributor_of_another_org_is_refused_whatever_is_forced(org):
    other = create_org("OTHER", "Other")
    name = "katello-manifest_small_modified-2017.zip"
    do_import(other, name, SIG)
    with pytest.raises(importer.ManifestRefused) as exc:
        do_import(org, name, *importer.CONFLICTS)
    assert "OTHER" in exc.value.record.message and nothing_stored(org)
    importer.delete_manifest(other)
    assert do_import(org, name, SIG).status == "SUCCESS"


# --- Re-import ----------------------------------------------------------------------------------

def test_reimport_updates_the_same_subscription_in_place(org):
    """Katello's pair: same distributor and export time, end 2018 → 2038, product 388 added."""
    first, second = "katello-manifest_small.zip", "katello-manifest_small_modified-2017.zip"
    with m.at_export(first):
        do_import(org, first, SIG)
        sub = Subscription.objects.get(org=org)
        normal = Pool.objects.get(subscription=sub, type="NORMAL")
        web = physical(org, "web1", products=[{"productId": "273", "productName": "Containers"}])
        (held,) = ents(web)
        assert held.pool_id == normal.pk and held.end.year == 2018
        with pytest.raises(importer.ManifestConflict) as exc:
            do_import(org, second, SIG)
        assert exc.value.keys == ["MANIFEST_SAME"]
        record = do_import(org, second, SIG, "MANIFEST_SAME")
    assert record.counts | {"products": 0} == {
        "entitlements": 1, "active": 1, "ended": 0, "created": 0, "updated": 1, "unchanged": 0,
        "removed": 0, "products": 0, "revoked": 0}
    again = Subscription.objects.get(org=org)
    assert (again.pk, again.uuid, again.end.year) == (sub.pk, sub.uuid, 2038)
    assert sorted(again.product.provided_products.values_list("sku", flat=True)) == ["172", "273", "388"]
    assert Product.objects.get(org=org, sku="388").name == "RHEL for SAP - 4 Year Extended Update Support"
    normal.refresh_from_db()
    assert normal.end.year == 2038 and normal.consumed == 1
    (kept,) = ents(web)
    assert (kept.pk, kept.end.year) == (held.pk, 2038)  # the system's entitlement survived


def test_reimport_removes_the_vanished_subscription_and_re_resolves_its_systems(org):
    before, after = ("katello-legacy-fake-manifest-syncable-2012-05.zip",
                     "katello-legacy-fake-manifest-syncable-without-nature-2012-05.zip")
    with m.at_export(before):
        do_import(org, before, SIG)
        nature = Subscription.objects.get(org=org, product__sku="NATURE")
        zoo_nature = physical(org, "both", products=[{"productId": "42"}, {"productId": "43"}])
        nature_only = physical(org, "nature", products=[{"productId": "43"}])
        assert status(zoo_nature) == status(nature_only) == "valid"
        # A local subscription that also provides 43 (the systems keep NATURE meanwhile).
        subs.create_product(org, "LOCAL43", "Local nature", provided=["43"])
        subs.create_subscription(org, "LOCAL43", 5)
        assert {e.pool.product.sku for e in ents(nature_only)} == {"NATURE"}
        record = do_import(org, after, SIG)
    assert record.counts["removed"] == 1 and record.counts["revoked"] >= 2
    assert not Subscription.objects.filter(pk=nature.pk).exists()
    assert pools(org) == [("NORMAL", "LOCAL43", 5), ("NORMAL", "ZOO", 20)]
    revoked = EntitlementEvent.objects.filter(org=org, action="revoked", trigger="manifest")
    assert sorted(revoked.values_list("system_name", "reason")) == [
        ("both", "subscription_deleted"), ("nature", "subscription_deleted")]
    # Re-resolved after commit: both now covered by the local subscription.
    assert {e.pool.product.sku for e in ents(nature_only)} == {"LOCAL43"}
    assert {e.pool.product.sku for e in ents(zoo_nature)} == {"ZOO", "LOCAL43"}
    with m.at_export(after):  # ZOO ended in 2025
        assert status(zoo_nature) == status(nature_only) == "valid"


def test_quantity_drop_revokes_the_newest_entitlements_and_re_resolves_the_guests(org, settings, tmp_path):
    """A re-signed copy (test key, configured as trusted) of a manifest active until 2038:
    3 units, three hosts entitled in order, then a newer copy with 1 unit."""
    m.trust(settings, tmp_path, m.signer().cert_pem)
    name = "katello-manifest_small_modified-2017.zip"
    export_time = m.created(name)

    def copy(quantity, later):
        def edit(docs):
            m.set_created(docs, export_time + timedelta(days=later))
            for ent in m.entitlements(docs):
                ent["quantity"] = quantity
        return m.resign(name, edit)

    org.hypervisor_autobind_enabled = False
    org.save()
    first = importer.import_manifest(org, copy(3, 1))
    assert (first.signature, first.conflicts) == ("valid", [])
    assert pools(org) == [("NORMAL", "RH2262474", 3), ("UNMAPPED_GUEST", "RH2262474", 300)]
    normal = Pool.objects.get(org=org, type="NORMAL")
    hosts, guests = [], []
    for n in (1, 2, 3):
        host = report(org, f"esx{n}", [f"g{n}"])
        subs.attach(org, host.uuid, normal.uuid)
        hosts.append(host)
        guests.append(guest(org, f"g{n}", products=[{"productId": "273"}]))
    assert [status(g) for g in guests] == ["valid"] * 3
    assert Pool.objects.filter(org=org, type="ENTITLEMENT_DERIVED").count() == 3

    record = importer.import_manifest(org, copy(1, 2))
    assert record.counts["updated"] == 1
    assert pools(org) == [("ENTITLEMENT_DERIVED", "RH2262474", 100), ("NORMAL", "RH2262474", 1),
                          ("UNMAPPED_GUEST", "RH2262474", 100)]
    assert [len(ents(h)) for h in hosts] == [1, 0, 0]  # esx1 was entitled first: it keeps its unit
    revoked = EntitlementEvent.objects.filter(org=org, action="revoked")
    assert sorted(revoked.values_list("system_name", "reason")) == [
        ("esx2", "subscription_reduced"), ("esx3", "subscription_reduced"),
        ("g2", "source_revoked"), ("g3", "source_revoked")]
    assert [status(g) for g in guests] == ["valid", "invalid", "invalid"]  # re-resolved: none left
    assert Pool.objects.get(org=org, type="NORMAL").consumed == 1


def test_virt_limit_removed_drops_the_bonus_and_derived_pools(org, settings, tmp_path):
    m.trust(settings, tmp_path, m.signer().cert_pem)
    name = "katello-manifest_small_modified-2017.zip"

    def copy(later, virt_limit):
        def edit(docs):
            m.set_created(docs, m.created(name) + timedelta(days=later))
            product = docs["export/products/RH2262474.json"]
            product["attributes"] = [a for a in product["attributes"] if a["name"] != "virt_limit"]
            if virt_limit:
                product["attributes"].append({"name": "virt_limit", "value": virt_limit})
        return m.resign(name, edit)

    org.hypervisor_autobind_enabled = False
    org.save()
    importer.import_manifest(org, copy(1, "4"))
    host = report(org, "esx1", ["g1"])
    subs.attach(org, host.uuid, Pool.objects.get(org=org, type="NORMAL").uuid)
    g1 = guest(org, "g1", products=[{"productId": "273"}])
    assert Pool.objects.get(org=org, type="ENTITLEMENT_DERIVED").quantity == 4 and status(g1) == "valid"
    importer.import_manifest(org, copy(2, None))
    assert pools(org) == [("NORMAL", "RH2262474", 1)]
    assert [e.pool.type for e in ents(g1)] == []  # its host pool is gone; re-resolved, nothing fits
    assert [e.pool.type for e in ents(host)] == ["NORMAL"]


# --- Delete and history -------------------------------------------------------------------------

def test_delete_manifest_removes_subscriptions_pools_and_resets_the_checks(org):
    name = "katello-manifest_small_modified-2017.zip"
    do_import(org, name, SIG)
    web = physical(org, "web1", products=[{"productId": "273"}])
    assert status(web) == "valid"
    with pytest.raises(importer.ManifestConflict):
        do_import(org, name, SIG)  # MANIFEST_SAME
    record = importer.delete_manifest(org, principal="admin")
    assert (record.status, record.message, record.counts) == (
        "DELETE", "Subscriptions deleted by admin.", {"removed": 1, "revoked": 1})
    assert nothing_stored(org) and status(web) == "invalid"
    assert EntitlementEvent.objects.filter(system_name="web1", reason="manifest_deleted").exists()
    with pytest.raises(importer.NoManifest):
        importer.delete_manifest(org)
    assert do_import(org, name, SIG).status == "SUCCESS"  # the same file is new again
    history = list(ManifestImport.objects.filter(org=org).values_list("status", flat=True))
    assert history == ["SUCCESS", "DELETE", "FAILURE", "SUCCESS"]


def test_one_resolution_per_system_for_an_import_of_many_subscriptions(org, trust_redhat, monkeypatch):  # noqa: F811
    name = "robottelo-expired-manifest-2023-03.zip"
    systems = [physical(org, f"s{n}", products=[{"productId": "69"}]) for n in range(3)]
    calls = []
    real = tasks.resolve_systems.delay
    monkeypatch.setattr(tasks.resolve_systems, "delay", lambda ids, trigger: (
        calls.append(set(ids)), real(ids, trigger)))
    with m.at_export(name):
        do_import(org, name)
    assert calls == [{s.pk for s in systems}]  # one batch, each system once


def test_the_bulk_import_never_matches_a_manifest_subscription(org):
    from subscriptions import importer as bulk

    do_import(org, "katello-manifest_small_modified-2017.zip", SIG)
    managed = Subscription.objects.get(org=org)
    rows = bulk.parse_json({"subscriptions": [{"product": "RH2262474", "quantity": 7,
                                               "start": "2026-01-01", "end": "2027-01-01",
                                               "contract_number": managed.contract_number}]})
    assert bulk.run(org, rows)["subscriptions"]["created"] == 1
    assert Subscription.objects.get(pk=managed.pk).quantity == 1  # untouched
    assert Subscription.objects.filter(org=org, managed=False, quantity=7).exists()


def test_nothing_of_the_keys_is_stored(org, trust_redhat):  # noqa: F811
    name = "robottelo-expired-manifest-2023-03.zip"
    with m.at_export(name):
        do_import(org, name, file_name="evil\x00name.zip", principal="ad\udcffmin")
    stored = " ".join(str(row) for model in (ManifestImport, UpstreamDistributor, Subscription)
                      for row in model.objects.values())
    assert "PRIVATE KEY" not in stored and "BEGIN CERTIFICATE" not in stored
    record = ManifestImport.objects.get(org=org)
    assert (record.file_name, record.principal) == ("evilname.zip", "ad?min")


def test_the_same_manifest_again_changes_nothing(org, trust_redhat):  # noqa: F811
    name = "robottelo-expired-manifest-2023-03.zip"
    with m.at_export(name):
        do_import(org, name)
        before = sorted(Pool.objects.filter(org=org).values_list("uuid", "quantity", "updated"))
        record = do_import(org, name, "MANIFEST_SAME")
    assert (record.counts["unchanged"], record.counts["updated"], record.counts["created"]) == (3, 0, 0)
    assert sorted(Pool.objects.filter(org=org).values_list("uuid", "quantity", "updated")) == before
