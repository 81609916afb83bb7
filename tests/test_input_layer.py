"""The input layer (sam/inputs.py) in each surface's words: what is refused, with which status
and error shape, and that nothing is stored; request body limits; errors without internals."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client

from hypervisors import tasks
from hypervisors.models import Report
from orgs import services as orgs
from orgs.models import System
from subscriptions import services as subs
from subscriptions.models import Entitlement, Pool, Product, Subscription
from tests.api_actors import make_actors
from tests.scenario import acme, physical, report, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1024 * 1024
REPORTER_PASSWORD = "reporter-pass-1"
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    org = acme()
    actors = make_actors(org)
    orgs.set_member_role(org, "virtwho", "reporter", password=REPORTER_PASSWORD)
    browser = Client()
    browser.force_login(get_user_model().objects.get(username="org-admin"))
    token = base64.b64encode(f"virtwho:{REPORTER_PASSWORD}".encode()).decode()
    return {"org": org, "api": actors.clients["admin"], "browser": browser,
            "reporter": {"HTTP_AUTHORIZATION": f"Basic {token}"}}


def _counts() -> tuple:
    return tuple(m.objects.count() for m in (System, Report, Product, Subscription, Pool, Entitlement))


def _api_error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def _candlepin_error(response, status: int = 400) -> str:
    assert response.status_code == status, response.content
    assert response["x-candlepin-request-uuid"]
    return response.json()["displayMessage"]


# --- NUL and surrogates, each surface's shape ----------------------------------------------

def test_api_refuses_nul_and_surrogates_anywhere_in_json(world):
    api, before = world["api"], _counts()
    for body in ({"name": "box", "facts": {"cpu": "a\x00b"}},
                 {"name": "box", "facts": {"a\ud800": "x"}},
                 {"name": "box", "installed_products": [{"productId": "479\x00"}]}):
        error = _api_error(api.generic("POST", "/api/v1/orgs/ACME/systems/", json.dumps(body),
                                       content_type="application/json"))
        assert "NUL characters or unpaired surrogates" in error["message"]
    error = _api_error(api.get("/api/v1/orgs/ACME/systems/?name=a%00b"))
    assert error["code"] == "invalid_input" and "query parameter 'name'" in error["message"]
    assert _api_error(api.get("/api/v1/orgs/AC%00ME/"))["code"] == "invalid_input"
    assert _counts() == before


def test_candlepin_refuses_nul_in_query_path_and_report(world):
    client, reporter, before = Client(), world["reporter"], _counts()
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "esx1"}, "guestIds": []}]})
    for url in ("/candlepin/hypervisors/ACME?reporter_id=r%001", "/rhsm/hypervisors/AC%00ME",
                "/candlepin/hypervisors?owner=AC%00ME"):
        assert "NUL" in _candlepin_error(client.post(url, body, content_type="application/json",
                                                     **reporter))
    assert _candlepin_error(client.put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=%00",
                                       **reporter))
    nul_guest = json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": "esx1"}, "guestIds": ["g\x00"]}]})
    message = _candlepin_error(client.post("/candlepin/hypervisors/ACME?reporter_id=r1", nul_guest,
                                           content_type="application/json", **reporter))
    assert message.startswith("Invalid host to guest mapping")
    assert _counts() == before


def test_ui_refuses_nul_in_filters_and_forms_with_a_400_page(world):
    browser, before = world["browser"], _counts()
    for url in ("/o/ACME/hypervisors/?q=a%00b", "/o/ACME/systems/?q=%00", "/o/ACME/reports/?reporter=%00"):
        page = browser.get(url)
        assert page.status_code == 400 and "Request refused" in page.content.decode(), url
    page = browser.post("/o/ACME/members/", {"username": "new\x00user", "role": "viewer"})
    assert page.status_code == 400 and "form field &#x27;username&#x27;" in page.content.decode()
    page = browser.post("/o/ACME/tokens/", {"name": "t\x00", "role": "reporter"})
    assert page.status_code == 400
    assert _counts() == before and get_user_model().objects.filter(username__startswith="new").count() == 0


# --- Deep JSON ---------------------------------------------------------------------------------

def test_deep_json_is_a_400_on_api_checkin_legacy_and_import(world):
    api, browser, reporter, before = world["api"], world["browser"], world["reporter"], _counts()
    error = _api_error(api.generic("POST", "/api/v1/orgs/ACME/systems/", DEEP,
                                   content_type="application/json"))
    assert "nested too deeply" in error["message"]
    nested = {"name": "box", "facts": {"k": "v"}, "installed_products": [{"x": [[[[[[[[[[[[[[[[[[[
        [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}
    assert "nested more than 32 levels" in _api_error(
        api.post("/api/v1/orgs/ACME/systems/", nested, format="json"))["message"]
    client = Client()
    for url in ("/candlepin/hypervisors/ACME?reporter_id=r1", "/rhsm/hypervisors?owner=ACME"):
        assert "nested too deeply" in _candlepin_error(
            client.post(url, DEEP, content_type="application/json", **reporter))
    error = _api_error(api.generic("POST", "/api/v1/orgs/ACME/import/", DEEP,
                                   content_type="application/json"))
    assert "nested too deeply" in error["message"] and error["code"] == "invalid_import"
    page = browser.post("/o/ACME/subscriptions/import/",
                        {"file": SimpleUploadedFile("deep.json", DEEP.encode())})
    assert page.status_code == 400 and "nested too deeply" in page.content.decode()
    assert _counts() == before


# --- Integers and derived quantities -------------------------------------------------------------

def test_integers_beyond_their_column_are_400(world):
    api, org, before = world["api"], world["org"], _counts()
    box = physical(org, "box", products=[])
    subscribe(org, "VDC", 1)
    pool = Pool.objects.get(type=Pool.Type.NORMAL)
    before = _counts()
    admin = {"HTTP_AUTHORIZATION": _basic("org-admin", "actor-pass-word-1")}
    for page in (10**30, 2**63):
        message = _candlepin_error(Client().get(
            f"/candlepin/owners/ACME/hypervisors?page={page}", **admin))
        assert "page and per_page" in message
    error = _api_error(api.get(f"/api/v1/orgs/ACME/products/?offset={10**30}"))
    assert "offset" in error["fields"]
    for body in ({"product": "VDC", "quantity": 3e9}, {"product": "VDC", "quantity": 2**40}):
        assert _api_error(api.post("/api/v1/orgs/ACME/subscriptions/", body, format="json"))
    error = _api_error(api.post("/api/v1/orgs/ACME/entitlements/",
                                {"system": str(box.uuid), "pool": str(pool.uuid), "quantity": 3e9},
                                format="json"))
    assert "quantity" in error["message"]
    error = _api_error(api.post("/api/v1/orgs/ACME/products/", {
        "sku": "BIG", "name": "Big", "attributes": {"virt_limit": "999999999999"}}, format="json"))
    assert "virt_limit" in error["message"]
    assert _api_error(api.post("/api/v1/orgs/ACME/systems/", {"name": "x", "n": 2**64},
                               format="json"))["code"] == "invalid_input"
    assert _counts() == before


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_derived_pool_sizes_must_fit_the_pool_column(world):
    org, api = world["org"], world["api"]
    subs.create_product(org, "MULTI", "Multiplied", attributes={"instance_multiplier": "1000"})
    subs.create_product(org, "WIDE", "Many guests", attributes={"virt_limit": "1000"})
    before = _counts()
    # 10,000,000 is a valid quantity, but × 1000 does not fit a pool (2^31 - 1).
    for sku in ("MULTI", "WIDE"):
        error = _api_error(api.post("/api/v1/orgs/ACME/subscriptions/",
                                    {"product": sku, "quantity": 10_000_000}, format="json"))
        assert "2147483647" in error["message"], error
    assert _counts() == before
    wide = subscribe(org, "WIDE", 1000)
    error = _api_error(api.patch(f"/api/v1/orgs/ACME/subscriptions/{wide.uuid}/",
                                 {"quantity": 10_000_000}, format="json"))
    assert "UNMAPPED_GUEST pool would hold" in error["message"]
    wide.refresh_from_db()
    assert wide.quantity == 1000
    assert Pool.objects.get(subscription=wide, type=Pool.Type.UNMAPPED_GUEST).quantity == 1_000_000


def test_sockets_fact_beyond_any_machine_is_capped(world):
    box = physical(world["org"], "big-box", facts={"cpu.cpu_socket(s)": str(10**15)})
    assert box.sockets == 65_536


# --- Request limits --------------------------------------------------------------------------

def test_django_body_limit_everywhere_but_checkin_and_import(world, settings):
    api, browser = world["api"], world["browser"]
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440  # Django's default
    big = b"{" + b" " * (3 * MB) + b"}"
    assert _api_error(api.generic("POST", "/api/v1/orgs/ACME/systems/", big,
                                  content_type="application/json"), 413)["code"] == "too_large"
    page = browser.post("/accounts/login/", "username=" + "a" * (3 * MB),
                        content_type="application/x-www-form-urlencoded")
    assert page.status_code == 413
    # The import keeps its own limit (10 MiB): a 3 MB document is read and validated.
    doc = json.dumps({"products": [{"sku": "P", "name": "P"}]}).encode()
    doc = doc[:-1] + b" " * (3 * MB) + b"}"
    r = api.generic("POST", "/api/v1/orgs/ACME/import/?dry_run=1", doc,
                    content_type="application/json")
    assert r.status_code == 200 and r.json()["products"]["created"] == 1, r.content
    upload = SimpleUploadedFile("p.json", doc)
    assert browser.post("/o/ACME/subscriptions/import/", {"file": upload, "dry_run": "on"}
                        ).status_code == 200
    too_big = b" " * (11 * MB)
    assert _api_error(api.generic("POST", "/api/v1/orgs/ACME/import/", too_big,
                                  content_type="text/csv"), 413)["code"] == "too_large"


def test_checkin_keeps_its_own_limit(world, settings):
    settings.SAM_REPORT_MAX_BYTES = 4 * MB
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "esx1"},
                                        "guestIds": ["g1"]}]}).encode()
    padded = body + b" " * (3 * MB)
    r = Client().post("/candlepin/hypervisors/ACME?reporter_id=r1", padded,
                      content_type="application/json", **world["reporter"])
    assert r.status_code == 200, r.content
    r = Client().post("/candlepin/hypervisors/ACME?reporter_id=r1", body + b" " * (5 * MB),
                      content_type="application/json", **world["reporter"])
    assert "larger than the configured limit" in _candlepin_error(r, 413)


# --- Errors without internals --------------------------------------------------------------------

def test_failed_job_shows_a_reference_not_the_error(world):
    org = world["org"]
    job = Report.objects.create(org=org, reporter_id="r1", state=Report.State.CREATED,
                                payload=b"not zlib at all", payload_size=15)
    assert tasks.apply_report_task.apply(args=[job.id]).get() == "failed"
    job.refresh_from_db()
    assert job.state == Report.State.FAILED and "decompressing" in job.error  # operators' copy
    ref = job.error.split("]")[0].removeprefix("[reference ")
    seen = Client().get(f"/candlepin/jobs/{job.uuid}", **world["reporter"]).json()
    message = seen["resultData"]["message"]
    assert ref in message and "decompressing" not in message and "Error" not in message
    detail = world["api"].get(f"/api/v1/orgs/ACME/reports/{job.uuid}/").json()
    assert ref in detail["error"] and "decompressing" not in json.dumps(detail)
    page = world["browser"].get(f"/o/ACME/reports/{job.uuid}/").content.decode()
    assert ref in page and "decompressing" not in page


def test_internal_errors_answer_a_reference_in_each_shape(world, caplog):
    """A row that cannot be read (stored before the date rules) makes a page fail: clients
    get a generic text with a reference; the log has the database's message."""
    org = world["org"]
    host = report(org, "esx1", [])
    subscribe(org, "VDC", 1)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE orgs_system SET last_checkin = %s WHERE id = %s",
                       ["0001-01-01T00:00:00+05:00", host.pk])
        cursor.execute("UPDATE subscriptions_subscription SET start = %s",
                       ["0001-01-01T00:00:00+05:00"])
    orgs.set_member_role(org, "org-admin", "admin")
    admin = {"HTTP_AUTHORIZATION": _basic("org-admin", "actor-pass-word-1")}
    message = _candlepin_error(Client().get("/candlepin/owners/ACME/hypervisors", **admin), 500)
    assert "reference" in message and "year" not in message and "Error" not in message
    error = _api_error(world["api"].get("/api/v1/orgs/ACME/subscriptions/"), 500)
    assert error["code"] == "server_error" and "reference" in error["message"]
    assert "year" not in error["message"] and "Error" not in error["message"]
    ref = error["message"].split("reference ")[1].split(")")[0]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_unlimited_pools_consumed_count_never_overflows(world):
    org, api = world["org"], world["api"]
    subs.create_product(org, "ME", "Multi", attributes={"multi-entitlement": "yes"})
    subscribe(org, "ME", -1)
    pool = Pool.objects.get(subscription__product__sku="ME", type=Pool.Type.NORMAL)
    Pool.objects.filter(pk=pool.pk).update(consumed=2**31 - 2)
    box = physical(org, "box", products=[])
    r = api.post("/api/v1/orgs/ACME/entitlements/",
                 {"system": str(box.uuid), "pool": str(pool.uuid), "quantity": 2}, format="json")
    assert _api_error(r, 409)["reason"] == "pool_exhausted"
    assert not Entitlement.objects.filter(system=box).exists()


@pytest.mark.parametrize("ordering,position", [
    ("", "1; DROP"), ("", str(10**30)), ("", "\x00"), ("name", "a\x00"),
    ("registered_at", "0001-01-01T00:00:00+05:00"), ("registered_at", "yesterday"),
])
def test_crafted_cursors_name_no_page(world, ordering, position):
    physical(world["org"], "box")
    cursor = base64.b64encode(urlencode({"p": position}).encode()).decode()
    url = f"/api/v1/orgs/ACME/systems/?cursor={quote(cursor)}" + (
        f"&ordering={ordering}" if ordering else "")
    assert _api_error(world["api"].get(url), 404)["code"] == "not_found"
