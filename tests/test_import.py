"""Bulk import of products and subscriptions (subscriptions/importer.py, POST /import/).

A valid file creates products, subscriptions and pools; re-importing it changes nothing; a file
with one bad row applies nothing and names the row and why.
"""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from orgs.services import create_org
from subscriptions import importer
from subscriptions.models import Pool, Product, Subscription
from tests.api_actors import make_actors

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/orgs/ACME/import/"

VALID = {
    "products": [
        {"sku": "VDC", "name": "Virtual Datacenter", "attributes": {"virt_limit": "unlimited"},
         "derived": "RHEL-G"},  # refers to a product defined further down
        {"sku": "RHEL-G", "name": "RHEL guest", "provided": ["479"]},
        {"sku": "479", "name": "Red Hat Enterprise Linux Server"},
    ],
    "subscriptions": [
        {"product": "VDC", "quantity": 2, "start": "2025-01-01", "end": "2099-01-01",
         "contract_number": "C-100"},
        {"product": "479", "quantity": -1, "start": "2025-01-01T00:00:00+02:00",
         "end": "2099-06-30T12:00:00Z", "external_id": "C-200", "order_number": "O-9"},
    ],
}

CSV = """record,sku,name,attributes,provided,derived,product,quantity,start,end,contract_number
product,479,Red Hat Enterprise Linux Server,,,,,,,,
product,RHEL-4G,RHEL with 4 guests,virt_limit=4;stacking_id=rh,479,,,,,,
subscription,,,,,,RHEL-4G,3,2025-01-01,2099-01-01,C-1
subscription,,,,,,479,10,2025-01-01,2099-01-01,C-2
"""


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin():
    org = create_org("ACME", "ACME Corp")
    return make_actors(org).clients["admin"]


def _upload(client, name: str, content: str, content_type: str = "application/octet-stream", query=""):
    upload = SimpleUploadedFile(name, content.encode(), content_type=content_type)
    return client.post(URL + query, {"file": upload}, format="multipart")


def _counts(kind: str, created=0, updated=0, unchanged=0) -> dict:
    return {kind: {"created": created, "updated": updated, "unchanged": unchanged}}


def test_json_file_creates_and_reimport_is_idempotent(admin):
    r = _upload(admin, "subs.json", json.dumps(VALID))
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["rows"] == 5 and body["dry_run"] is False
    assert body["products"] == _counts("p", created=3)["p"]
    assert body["subscriptions"] == _counts("s", created=2)["s"]
    vdc = Subscription.objects.get(contract_number="C-100")
    assert vdc.derived_product.sku == "RHEL-G" and vdc.quantity == 2
    assert {p.type: p.quantity for p in Pool.objects.filter(subscription=vdc)} == {
        "NORMAL": 2, "UNMAPPED_GUEST": -1}
    other = Subscription.objects.get(contract_number="C-200")
    assert other.quantity == -1 and other.order_number == "O-9" and other.start.hour == 22

    r = _upload(admin, "subs.json", json.dumps(VALID))  # the same file again
    assert r.json()["products"]["unchanged"] == 3 and r.json()["subscriptions"]["unchanged"] == 2
    assert Subscription.objects.count() == 2 and Product.objects.count() == 3 and Pool.objects.count() == 3

    changed = json.loads(json.dumps(VALID))
    changed["subscriptions"][0]["quantity"] = 5
    changed["products"][2]["name"] = "RHEL Server"
    r = admin.post(URL, changed, format="json")  # a JSON body works as well as a file
    assert r.status_code == 200
    assert r.json()["subscriptions"] == _counts("s", updated=1, unchanged=1)["s"]
    assert r.json()["products"] == _counts("p", updated=1, unchanged=2)["p"]
    assert Subscription.objects.count() == 2
    assert Pool.objects.get(subscription=vdc, type="NORMAL").quantity == 5


def test_csv_file_creates_and_reimport_is_idempotent(admin):
    r = _upload(admin, "subs.csv", CSV)
    assert r.status_code == 200, r.json()
    assert r.json()["products"]["created"] == 2 and r.json()["subscriptions"]["created"] == 2
    product = Product.objects.get(sku="RHEL-4G")
    assert product.attributes == {"virt_limit": "4", "stacking_id": "rh"}
    assert [p.sku for p in product.provided_products.all()] == ["479"]
    sub = Subscription.objects.get(contract_number="C-1")
    assert {p.type: p.quantity for p in sub.pools.all()} == {"NORMAL": 3, "UNMAPPED_GUEST": 12}
    # Detected by the first character too (no extension, generic content type), and idempotent.
    r = _upload(admin, "export", CSV)
    assert r.status_code == 200
    assert r.json()["products"]["unchanged"] == 2 and r.json()["subscriptions"]["unchanged"] == 2
    assert Subscription.objects.count() == 2 and Pool.objects.count() == 3
    r = admin.generic("POST", URL, CSV.replace(",3,", ",4,"), content_type="text/csv")
    assert r.status_code == 200 and r.json()["subscriptions"]["updated"] == 1


def test_one_bad_row_applies_nothing_and_names_it(admin):
    bad = json.loads(json.dumps(VALID))
    bad["subscriptions"].append({"product": "NOPE", "quantity": -5, "start": "2025-01-01",
                                 "end": "2024-01-01", "contract_number": "C-300"})
    r = _upload(admin, "subs.json", json.dumps(bad))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_import" and "nothing was imported" in error["message"]
    (row,) = error["rows"]
    assert (row["row"], row["record"], row["key"], row["path"]) == (6, "subscription", "C-300",
                                                                   "subscriptions[2]")
    text = " ".join(row["errors"])
    assert "quantity" in text and "'NOPE'" in text and "end: must be after start" in text
    assert Product.objects.count() == 0 and Subscription.objects.count() == 0


def test_csv_bad_row_reports_its_line(admin):
    bad = CSV.replace("RHEL-4G,3,", "RHEL-4G,-3,").replace(",479,10,", ",UNKNOWN,10,")
    r = _upload(admin, "subs.csv", bad)
    assert r.status_code == 400
    rows = {e["row"]: e["errors"] for e in r.json()["error"]["rows"]}
    assert set(rows) == {4, 5}  # lines of the file; the header is line 1
    assert "quantity" in rows[4][0] and "'UNKNOWN'" in rows[5][0]
    assert Product.objects.count() == 0 and Subscription.objects.count() == 0


def test_validation_of_keys_references_and_fields(admin):
    data = {
        "products": [{"sku": "A", "name": "A", "provided": ["MISSING"]}, {"sku": "A", "name": "again"},
                     {"sku": "B", "name": "B", "attributes": {"virt_limit": "-1"}, "colour": "red"}],
        "subscriptions": [{"product": "A", "quantity": 1, "start": "2025-01-01", "end": "2026-01-01"},
                          {"product": "A", "quantity": "x", "start": "yesterday", "end": "2026-01-01",
                           "contract_number": "K", "external_id": "L"}],
    }
    r = admin.post(URL, data, format="json")
    assert r.status_code == 400
    errors = {e["row"]: " ".join(e["errors"]) for e in r.json()["error"]["rows"]}
    assert "'MISSING'" in errors[1] and "already defined in row 1" in errors[2]
    assert "virt_limit" in errors[3] and "colour: not a field" in errors[3]
    assert "contract_number: required" in errors[4]
    assert all(w in errors[5] for w in ("external_id", "quantity", "start"))


def test_existing_subscription_product_cannot_change(admin):
    assert _upload(admin, "subs.json", json.dumps(VALID)).status_code == 200
    moved = {"subscriptions": [{"product": "479", "quantity": 2, "start": "2025-01-01",
                                "end": "2099-01-01", "contract_number": "C-100"}]}
    r = admin.post(URL, moved, format="json")
    assert r.status_code == 400 and "cannot change" in r.json()["error"]["rows"][0]["errors"][0]


def test_dry_run_validates_only(admin):
    r = _upload(admin, "subs.json", json.dumps(VALID), query="?dry_run=true")
    assert r.status_code == 200 and r.json()["dry_run"] is True
    assert r.json()["subscriptions"]["created"] == 2
    assert Product.objects.count() == 0 and Subscription.objects.count() == 0


def test_unusable_files(admin):
    for name, content in (("a.json", "{not json"), ("a.csv", "sku,name\nX,Y\n"), ("a.json", "[]"),
                          ("a.csv", "record,size\nproduct,1\n")):
        r = _upload(admin, name, content)
        assert r.status_code == 400 and r.json()["error"]["rows"] == [], (name, content)
    r = admin.post(URL, {"other": "x"}, format="multipart")
    assert r.status_code == 400


def test_detect_format():
    assert importer.detect_format(b"{}", "x.txt", "text/plain") == "json"
    assert importer.detect_format(b"record,sku", "", "") == "csv"
    assert importer.detect_format(b"[]", "subs.csv", "") == "csv"
    assert importer.detect_format(b"x", "", "application/json") == "json"
