"""REST API v1: products, subscriptions, pools, entitlements, events (subscriptions/api.py).

Every endpoint and verb goes through the fixed actors (tests/api_actors.py); attach/remove
follow domain.md (derived pools come and go with the host's entitlement, guests re-resolved).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from orgs.services import create_org
from subscriptions import services as subs
from subscriptions.models import Entitlement, EntitlementEvent, Pool, Subscription
from tests.api_actors import READ, WRITE, make_actors
from tests.scenario import acme, guest, physical, report, status, subscribe

pytestmark = pytest.mark.django_db(transaction=True)



@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # actors' passwords


ORDER = ["viewer", "reporter", "other_admin", "anonymous", "admin"]  # admin last: it changes things


def _pool(sub: Subscription, type: str = "NORMAL") -> Pool:
    return Pool.objects.get(subscription=sub, type=type)


@pytest.fixture
def world():
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    vdc = subscribe(org, "VDC", 2)
    rhel = subscribe(org, "RHEL-4G", 1)
    esx = report(org, "esx1", [])
    ent = subs.attach(org, esx.uuid, _pool(vdc).uuid)
    actors = make_actors(org)
    return {"org": org, "actors": actors, "vdc": vdc, "rhel": rhel, "esx": esx, "ent": ent,
            "event": EntitlementEvent.objects.filter(org=org).first()}


def _cases(w) -> dict:
    base = f"/api/v1/orgs/{w['org'].key}"
    vdc, rhel, ent = w["vdc"], w["rhel"], w["ent"]
    return {
        "products.list": ("get", f"{base}/products/", None, 200),
        "products.read": ("get", f"{base}/products/VDC/", None, 200),
        "products.create": ("post", f"{base}/products/", {"sku": "NEW", "name": "New"}, 201),
        "products.patch": ("patch", f"{base}/products/RHEL-4G/", {"name": "Renamed"}, 200),
        "subscriptions.list": ("get", f"{base}/subscriptions/", None, 200),
        "subscriptions.read": ("get", f"{base}/subscriptions/{vdc.uuid}/", None, 200),
        "subscriptions.create": ("post", f"{base}/subscriptions/", {"product": "RHEL-4G", "quantity": 3},
                                 201),
        "subscriptions.patch": ("patch", f"{base}/subscriptions/{vdc.uuid}/", {"quantity": 5}, 200),
        "subscriptions.delete": ("delete", f"{base}/subscriptions/{rhel.uuid}/", None, 204),
        "pools.list": ("get", f"{base}/pools/", None, 200),
        "pools.read": ("get", f"{base}/pools/{_pool(vdc).uuid}/", None, 200),
        "entitlements.list": ("get", f"{base}/entitlements/", None, 200),
        "entitlements.read": ("get", f"{base}/entitlements/{ent.uuid}/", None, 200),
        "entitlements.create": ("post", f"{base}/entitlements/",
                                {"system": str(w["esx"].uuid), "pool": str(_pool(rhel).uuid)}, 201),
        "entitlements.delete": ("delete", f"{base}/entitlements/{ent.uuid}/", None, 204),
        "events.list": ("get", f"{base}/events/", None, 200),
        "events.read": ("get", f"{base}/events/{w['event'].id}/", None, 200),
        "import": ("post", f"{base}/import/", {"products": [{"sku": "IMP", "name": "Imported"}]}, 200),
    }


CASES = ["products.list", "products.read", "products.create", "products.patch", "subscriptions.list",
         "subscriptions.read", "subscriptions.create", "subscriptions.patch", "subscriptions.delete",
         "pools.list", "pools.read", "entitlements.list", "entitlements.read", "entitlements.create",
         "entitlements.delete", "events.list", "events.read", "import"]


@pytest.mark.parametrize("case", CASES)
def test_permission_matrix(world, case):
    method, url, body, admin_status = _cases(world)[case]
    expected = {**(READ if method == "get" else WRITE), "admin": admin_status}
    got = {}
    for actor in ORDER:
        client = world["actors"].clients[actor]
        got[actor] = getattr(client, method)(url, body, format="json").status_code
    assert got == expected


def test_staff_sees_and_changes_every_org(world):
    staff = get_user_model().objects.create_user("operator", password="x", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    assert client.get("/api/v1/orgs/ACME/pools/").status_code == 200
    r = client.patch(f"/api/v1/orgs/ACME/subscriptions/{world['vdc'].uuid}/", {"quantity": 3}, format="json")
    assert r.status_code == 200 and r.json()["quantity"] == 3


def test_another_orgs_objects_are_404(world):
    other = world["actors"].other
    subs.create_product(other, "X", "Other product")
    sub = subs.create_subscription(other, "X", 1)
    admin = world["actors"].clients["admin"]
    assert admin.get(f"/api/v1/orgs/ACME/subscriptions/{sub.uuid}/").status_code == 404
    assert admin.get(f"/api/v1/orgs/ACME/pools/{_pool(sub).uuid}/").status_code == 404
    assert admin.get("/api/v1/orgs/ACME/products/X/").status_code == 404
    r = admin.post("/api/v1/orgs/ACME/entitlements/",
                   {"system": str(world["esx"].uuid), "pool": str(_pool(sub).uuid)}, format="json")
    assert r.status_code == 404
    assert admin.get(f"/api/v1/orgs/ACME/pools/?subscription={sub.uuid}").json()["count"] == 0


def test_product_create_and_patch(world):
    admin = world["actors"].clients["admin"]
    r = admin.post("/api/v1/orgs/ACME/products/", {"sku": "DC", "name": "Datacenter", "derived": "RHEL-G",
                                                   "attributes": {"virt_limit": "unlimited"}}, format="json")
    assert r.status_code == 201, r.json()
    assert r.json()["derived"] == "RHEL-G" and r.json()["attributes"] == {"virt_limit": "unlimited"}
    assert admin.post("/api/v1/orgs/ACME/products/", {"sku": "DC", "name": "again"},
                      format="json").status_code == 400
    r = admin.patch("/api/v1/orgs/ACME/products/DC/", {"provided": ["479"]}, format="json")
    assert r.json()["provided"] == ["479"] and r.json()["derived"] == "RHEL-G"
    r = admin.patch("/api/v1/orgs/ACME/products/DC/", {"attributes": {"virt_limit": "zero"}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid"
    r = admin.patch("/api/v1/orgs/ACME/products/DC/", {"name": "x"}, format="json", HTTP_IF_MATCH='"1"')
    assert r.status_code == 412


def test_subscription_detail_etag_and_if_match(world):
    admin = world["actors"].clients["admin"]
    url = f"/api/v1/orgs/ACME/subscriptions/{world['vdc'].uuid}/"
    r = admin.get(url)
    body, tag = r.json(), r["ETag"]
    assert body["updated"] and [p["type"] for p in body["pools"]] == ["NORMAL", "UNMAPPED_GUEST"]
    assert body["pools"][0]["consumed"] == 1 and body["derived_pools"] == 1
    r = admin.patch(url, {"quantity": 3}, format="json", HTTP_IF_MATCH='"12345"')
    assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
    assert admin.delete(url, HTTP_IF_MATCH='"12345"').status_code == 412
    r = admin.patch(url, {"quantity": 3}, format="json", HTTP_IF_MATCH=tag)
    assert r.status_code == 200 and r.json()["quantity"] == 3 and r["ETag"] != tag
    assert admin.patch(url, {"quantity": 4}, format="json", HTTP_IF_MATCH=tag).status_code == 412
    r = admin.patch(url, {"quantity": 0}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_quantity"
    assert admin.delete(url, HTTP_IF_MATCH=admin.get(url)["ETag"]).status_code == 204
    assert not Subscription.objects.filter(uuid=world["vdc"].uuid).exists()


def test_subscription_create_makes_pools(world):
    admin = world["actors"].clients["admin"]
    r = admin.post("/api/v1/orgs/ACME/subscriptions/", {"product": "RHEL-4G", "quantity": 2,
                                                        "contract_number": "C-1"}, format="json")
    assert r.status_code == 201, r.json()
    pools = {p["type"]: p["quantity"] for p in r.json()["pools"]}
    assert pools == {"NORMAL": 2, "UNMAPPED_GUEST": 8}
    r = admin.post("/api/v1/orgs/ACME/subscriptions/", {"product": "NOPE", "quantity": 2}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_product"


def test_attach_to_hypervisor_creates_derived_pool_and_covers_guest():
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    vdc = subscribe(org, "VDC", 1)
    esx = report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    assert status(g1) == "invalid"
    admin = make_actors(org).clients["admin"]
    normal = _pool(vdc)
    r = admin.post("/api/v1/orgs/ACME/entitlements/", {"system": str(esx.uuid), "pool": str(normal.uuid)},
                   format="json")
    assert r.status_code == 201, r.json()
    assert r.json()["system"]["uuid"] == str(esx.uuid) and r.json()["pool"] == str(normal.uuid)
    derived = admin.get(f"/api/v1/orgs/ACME/pools/?requires_host={esx.uuid}").json()["results"]
    assert [(p["type"], p["product"]["sku"], p["requires_host"]["name"]) for p in derived] == [
        ("ENTITLEMENT_DERIVED", "RHEL-G", "esx1")]
    assert status(g1) == "valid"
    detail = admin.get(f"/api/v1/orgs/ACME/pools/{derived[0]['uuid']}/").json()
    assert [c["system"]["name"] for c in detail["consumers"]] == ["g1"]
    events = admin.get(f"/api/v1/orgs/ACME/events/?system={g1.uuid}&action=attached").json()["results"]
    assert [e["pool_type"] for e in events] == ["ENTITLEMENT_DERIVED"]

    r = admin.delete(f"/api/v1/orgs/ACME/entitlements/{r.json()['uuid']}/")
    assert r.status_code == 204
    assert not Pool.objects.filter(requires_host=esx).exists()
    assert status(g1) == "invalid"
    assert Pool.objects.get(pk=normal.pk).consumed == 0
    events = admin.get(f"/api/v1/orgs/ACME/events/?system={g1.uuid}").json()["results"]
    assert [(e["action"], e["reason"]) for e in events][0] == ("revoked", "source_revoked")


def test_refusals_answer_409_with_reason(world):
    org, admin = world["org"], world["actors"].clients["admin"]
    p1 = physical(org, "p1", products=[])
    p2 = physical(org, "p2", products=[])
    url = "/api/v1/orgs/ACME/entitlements/"
    unmapped = _pool(world["rhel"], "UNMAPPED_GUEST")
    r = admin.post(url, {"system": str(p1.uuid), "pool": str(unmapped.uuid)}, format="json")
    assert r.status_code == 409
    assert r.json()["error"]["reason"] == "virt_only" and r.json()["error"]["message"]
    normal = _pool(world["rhel"])
    r = admin.post(url, {"system": str(p1.uuid), "pool": str(normal.uuid)}, format="json")
    assert r.status_code == 201
    r = admin.post(url, {"system": str(p1.uuid), "pool": str(normal.uuid)}, format="json")
    assert r.status_code == 409 and r.json()["error"]["reason"] == "already_entitled"
    r = admin.post(url, {"system": str(p2.uuid), "pool": str(normal.uuid)}, format="json")
    assert r.status_code == 409 and r.json()["error"]["reason"] == "pool_exhausted"
    assert "1 of 1" in r.json()["error"]["message"]
    r = admin.post(url, {"system": "not-a-uuid", "pool": str(normal.uuid)}, format="json")
    assert r.status_code == 400


def test_list_filters(world):
    admin = world["actors"].clients["admin"]
    rows = admin.get("/api/v1/orgs/ACME/pools/?type=NORMAL&product=RHEL-4G").json()["results"]
    assert [r["subscription"] for r in rows] == [str(world["rhel"].uuid)]
    rows = admin.get(f"/api/v1/orgs/ACME/entitlements/?system={world['esx'].uuid}").json()["results"]
    assert [r["uuid"] for r in rows] == [str(world["ent"].uuid)]
    assert admin.get("/api/v1/orgs/ACME/pools/?ordering=-quantity").status_code == 200
    assert admin.get("/api/v1/orgs/ACME/pools/?requires_host=nope").status_code == 400
    assert admin.get("/api/v1/orgs/ACME/events/?since=2999-01-01T00:00:00Z").json()["count"] == 0
    assert admin.get("/api/v1/orgs/ACME/events/?reason=manual").json()["count"] == 1
    assert admin.get("/api/v1/orgs/ACME/pools/?limit=100000").json()["count"] >= 1  # capped, not refused


@pytest.mark.parametrize("path,budget", [("pools", 4), ("subscriptions", 5), ("products", 5)])
def test_list_query_count_is_constant(path, budget, django_assert_num_queries):
    org = create_org("BIG", "Big")
    admin = make_actors(org).clients["admin"]
    subs.create_product(org, "P", "Base")
    for i in range(30):
        subs.create_product(org, f"S{i:02}", f"Product {i}", provided=["P"], derived="P",
                            attributes={"virt_limit": "2"} if i % 2 else {})
        subs.create_subscription(org, f"S{i:02}", 1)
    for rows in (5, 30):
        with django_assert_num_queries(budget):
            r = admin.get(f"/api/v1/orgs/BIG/{path}/?limit={rows}&type=NORMAL")
        assert r.status_code == 200 and len(r.json()["results"]) == rows
    assert Entitlement.objects.count() == 0
