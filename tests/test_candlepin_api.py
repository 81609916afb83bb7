"""Contract tests of the Candlepin-compatible hypervisor API (virt-who-api.md), both prefixes."""

from __future__ import annotations

import base64
import json
import re

import pytest

from hypervisors.models import GuestId, Report
from orgs import services as orgs
from orgs.models import System
from tests.scenario import acme, guest, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

PREFIXES = ["/candlepin", "/rhsm"]
STATES = {"CREATED", "WAITING", "RUNNING", "FINISHED", "FAILED", "CANCELED"}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def org():
    org = acme()
    orgs.set_member_role(org, "admin", "admin", password="admin-pass-1")
    orgs.set_member_role(org, "viewer", "viewer", password="viewer-pass-1")
    orgs.set_member_role(org, "virtwho", "reporter", password="reporter-pass-1")
    other = orgs.create_org("OTHER", "Other Corp")
    orgs.set_member_role(other, "stranger", "admin", password="stranger-pass-1")
    return org


ADMIN = basic("admin", "admin-pass-1")
VIEWER = basic("viewer", "viewer-pass-1")
REPORTER = basic("virtwho", "reporter-pass-1")
STRANGER = basic("stranger", "stranger-pass-1")


def report_body(*hosts) -> str:
    return json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": hv}, "name": f"{hv}.example.com",
         "guestIds": [{"guestId": g, "state": 1, "attributes": {"virtWhoType": "esx", "active": 1}}
                      for g in guests],
         "facts": {"cpu.cpu_socket(s)": "2", "hypervisor.type": "VMware ESXi"}}
        for hv, guests in hosts]})


def checkin(client, prefix, body, auth=REPORTER, query="?reporter_id=r1&env=&cloaked=False",
            owner="ACME"):
    return client.post(f"{prefix}/hypervisors/{owner}{query}", data=body,
                       content_type="text/plain", **auth)


def job(client, prefix, job_id, auth=REPORTER):
    return client.get(f"{prefix}/jobs/{job_id}?result_data=True", **auth)


def assert_candlepin(response, status):
    assert response.status_code == status, response.content
    assert response["x-candlepin-request-uuid"]
    assert response["Content-Type"].startswith("application/json")
    return response.json()


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("path", ["/status", "/status/"])
def test_status_both_paths_no_redirect(client, prefix, path):
    data = assert_candlepin(client.get(prefix + path), 200)
    assert data["result"] is True and data["standalone"] is True and data["mode"] == "NORMAL"
    assert {"hypervisors_async", "hypervisors_heartbeat"} <= set(data["managerCapabilities"])
    assert STAMP.match(data["timeUTC"])


@pytest.mark.parametrize("prefix", PREFIXES)
def test_root_lists_resources(client, prefix):
    data = assert_candlepin(client.get(prefix + "/"), 200)
    assert {"rel": "hypervisors", "href": "/hypervisors"} in data


@pytest.mark.parametrize("prefix", PREFIXES)
def test_async_checkin_then_job(client, org, prefix):
    response = checkin(client, prefix, report_body(("hv-1", ["g1", "g2"]), ("hv-2", [])))
    data = assert_candlepin(response, 200)
    assert data["state"] == "CREATED" and data["key"] == "HypervisorUpdateJob"
    assert data["statusPath"] == f"/jobs/{data['id']}" and data["owner"] == "ACME"
    assert data["principal"] == "virtwho" and STAMP.match(data["created"])
    polled = assert_candlepin(job(client, prefix, data["id"]), 200)
    assert polled["state"] == "FINISHED"
    result = polled["resultData"]
    assert sorted(h["name"] for h in result["created"]) == ["hv-1.example.com", "hv-2.example.com"]
    assert result["updated"] == result["unchanged"] == result["failedUpdate"] == []
    assert result["created"][0]["owner"] == {"key": "ACME"}
    assert System.objects.get(hypervisor_id="hv-1").reporter_id == "r1"
    assert set(GuestId.objects.values_list("guest_uuid", flat=True)) == {"g1", "g2"}


def test_checkin_counts_created_updated_unchanged(client, org):
    first = checkin(client, "/candlepin", report_body(("a", ["g1"]), ("b", ["g2"]), ("c", [])))
    assert job(client, "/candlepin", first.json()["id"]).json()["state"] == "FINISHED"
    second = checkin(client, "/candlepin", report_body(("a", ["g1"]), ("b", ["g2", "g3"]),
                                                       ("c", []), ("d", [])))
    result = job(client, "/candlepin", second.json()["id"]).json()["resultData"]
    names = {k: sorted(h["name"].split(".")[0] for h in result[k])
             for k in ("created", "updated", "unchanged")}
    assert names == {"created": ["d"], "updated": ["b"], "unchanged": ["a", "c"]}


def test_identical_report_is_answered_without_reapplying(client, org):
    body = report_body(("a", ["g1"]))
    first = checkin(client, "/candlepin", body).json()
    before = list(GuestId.objects.values_list("id", "updated"))
    again = checkin(client, "/candlepin", body).json()
    assert again["state"] == "FINISHED"
    assert again["resultData"]["unchanged"][0]["name"] == "a.example.com"
    assert list(GuestId.objects.values_list("id", "updated")) == before
    assert Report.objects.get(uuid=again["id"]).diff == {"identical_to": first["id"]}


def test_create_missing_false(client, org):
    checkin(client, "/candlepin", report_body(("known", [])))
    response = checkin(client, "/candlepin", report_body(("known", ["g1"]), ("unknown", [])),
                       query="?reporter_id=r2&create_missing=False")
    result = job(client, "/candlepin", response.json()["id"]).json()["resultData"]
    assert result["failedUpdate"] == ["unknown: Unable to find hypervisor with id unknown in org ACME"]
    assert [h["name"] for h in result["updated"]] == ["known.example.com"]
    assert not System.objects.filter(hypervisor_id="unknown").exists()


def test_empty_ids_ignored_and_duplicates_last_wins(client, org):
    body = json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": ""}, "guestIds": ["x"]},
        {"hypervisorId": None, "guestIds": ["y"]},
        {"name": "no id at all"},
        {"hypervisorId": {"hypervisorId": "DUP"}, "guestIds": ["first"]},
        {"hypervisorId": {"hypervisorId": "dup"}, "guestIds": ["", "second", {"guestId": ""}]},
    ], "unknownKey": 1})
    response = checkin(client, "/candlepin", body)
    result = job(client, "/candlepin", response.json()["id"]).json()["resultData"]
    assert len(result["created"]) == 1
    assert list(GuestId.objects.values_list("guest_uuid", flat=True)) == ["second"]
    assert System.objects.get().hypervisor_id == "dup"


def test_guest_moves_between_existing_hosts(client, org):
    checkin(client, "/candlepin", report_body(("h1", ["g1"]), ("h2", [])))
    response = checkin(client, "/candlepin", report_body(("h1", []), ("h2", ["g1"])))
    result = job(client, "/candlepin", response.json()["id"]).json()["resultData"]
    assert sorted(h["name"] for h in result["updated"]) == ["h1.example.com", "h2.example.com"]
    assert list(GuestId.objects.values_list("host__hypervisor_id", flat=True)) == ["h2"]
    diff = Report.objects.get(uuid=response.json()["id"]).diff
    assert diff["guests"]["moved"] == [["g1", "h1", "h2"]]


def test_absent_guest_ids_leave_list_empty_list_clears(client, org):
    checkin(client, "/candlepin", report_body(("h1", ["g1"])))
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "h1"}, "name": "renamed"}]})
    checkin(client, "/candlepin", body, query="?reporter_id=r9")
    assert GuestId.objects.count() == 1
    assert System.objects.get().name == "renamed"
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "h1"}, "guestIds": []}]})
    checkin(client, "/candlepin", body, query="?reporter_id=r10")
    assert GuestId.objects.count() == 0


@pytest.mark.parametrize("reported_first", [True, False])
def test_merge_by_system_uuid_both_directions_ignoring_case(client, org, reported_first):
    hw = "4C4C4544-0053-4B10-8032-B4C04F4A4D31"
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "esx-by-name"},
                                        "facts": {"dmi.system.uuid": hw}, "guestIds": []}]})
    if reported_first:
        checkin(client, "/candlepin", body)
        from hypervisors.services import register_system

        register_system(org, "box", facts={"dmi.system.uuid": hw.lower()}, hypervisor_id="esx-by-name")
    else:
        from hypervisors.services import register_system

        register_system(org, "box", facts={"dmi.system.uuid": hw.lower()})
        checkin(client, "/candlepin", body)
    assert System.objects.count() == 1
    system = System.objects.get()
    assert system.type == "hypervisor" and system.hypervisor_id == "esx-by-name"


def test_name_update(client, org):
    checkin(client, "/candlepin", report_body(("h1", [])))
    body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "H1"}, "name": "new-name",
                                        "guestIds": []}]})
    response = checkin(client, "/candlepin", body, query="?reporter_id=other")
    assert [h["name"] for h in job(client, "/candlepin", response.json()["id"]).json()
            ["resultData"]["updated"]] == ["new-name"]


@pytest.mark.parametrize("body, message", [
    ("", "Host to guest mapping was not provided for hypervisor update."),
    ("not json", "Invalid host to guest mapping was provided for hypervisor update."),
    ("{}", "Invalid host to guest mapping was provided for hypervisor update."),
    ('{"hv1": ["g1"]}', "Invalid host to guest mapping was provided for hypervisor update."),
    ('{"hypervisors": {}}', "Invalid host to guest mapping was provided for hypervisor update."),
    ("[1, 2]", "Invalid host to guest mapping was provided for hypervisor update."),
])
def test_invalid_bodies_get_400_and_store_nothing(client, org, body, message):
    data = assert_candlepin(checkin(client, "/candlepin", body), 400)
    assert data["displayMessage"] == message and data["requestUuid"]
    assert not Report.objects.exists() and not System.objects.exists()


def test_empty_hypervisor_list_is_valid(client, org):
    data = checkin(client, "/candlepin", '{"hypervisors": []}').json()
    result = job(client, "/candlepin", data["id"]).json()["resultData"]
    assert result == {"created": [], "updated": [], "unchanged": [], "failedUpdate": []}


def test_bad_entry_fails_alone(client, org):
    body = json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": "good"}, "guestIds": ["g1"]},
        {"hypervisorId": {"hypervisorId": "bad"}, "guestIds": "not-a-list"},
        {"hypervisorId": {"hypervisorId": "bad2"}, "facts": ["x"]},
    ]})
    result = job(client, "/candlepin", checkin(client, "/candlepin", body).json()["id"]).json()
    data = result["resultData"]
    assert [h["name"] for h in data["created"]] == ["good"]
    assert sorted(data["failedUpdate"]) == [
        "bad2: Unable to create hypervisor with id bad2 in org ACME",
        "bad: Unable to create hypervisor with id bad in org ACME"]


def test_body_over_limit_gets_413(client, org, settings):
    settings.SAM_REPORT_MAX_BYTES = 2048
    data = assert_candlepin(checkin(client, "/candlepin", report_body(("h", ["g"] * 200))), 413)
    assert "larger than the configured limit" in data["displayMessage"]
    assert not Report.objects.exists()


def test_backpressure_429_with_retry_after(client, org, settings):
    settings.SAM_REPORT_ORG_QUEUE_LIMIT = 1
    Report.objects.create(org=org, reporter_id="x", state="CREATED")
    response = checkin(client, "/candlepin", report_body(("h", [])))
    assert_candlepin(response, 429)
    assert response["Retry-After"].isdigit()
    assert Report.objects.count() == 1


def test_heartbeat(client, org):
    checkin(client, "/candlepin", report_body(("h1", []), ("h2", [])))
    System.objects.update(last_checkin=None)
    response = client.put("/rhsm/hypervisors/ACME/heartbeat?reporter_id=r1", **REPORTER)
    data = assert_candlepin(response, 200)
    assert data["state"] == "FINISHED" and data["key"] == "HypervisorHeartbeatUpdateJob"
    assert data["resultData"] == 'Last hypervisor check-in updated for owner "ACME" by reporter: r1'
    assert System.objects.filter(last_checkin__isnull=True).count() == 0
    missing = client.put("/rhsm/hypervisors/ACME/heartbeat", **REPORTER)
    assert assert_candlepin(missing, 400)["displayMessage"] == "reporter_id is absent or empty"


def test_legacy_sync_checkin(client, org):
    body = json.dumps({"legacy-hv": ["g1", {"guestId": "g2", "attributes": {"active": 1}}],
                       "": ["ignored"], "empty-hv": None})
    response = client.post("/candlepin/hypervisors?owner=ACME&env=", data=body,
                           content_type="application/json", **REPORTER)
    data = assert_candlepin(response, 200)
    assert sorted(h["name"] for h in data["created"]) == ["empty-hv", "legacy-hv"]
    assert set(GuestId.objects.values_list("guest_uuid", flat=True)) == {"g1", "g2"}
    assert assert_candlepin(client.post("/candlepin/hypervisors?owner=ACME", data="{",
                                        content_type="application/json", **REPORTER), 400)


def test_owner_and_user_owners(client, org):
    data = assert_candlepin(client.get("/candlepin/owners/ACME", **VIEWER), 200)
    assert data["key"] == "ACME" and data["displayName"] == "ACME Corp"
    assert data["contentAccessMode"] == "entitlement" and data["autobindDisabled"] is False
    assert STAMP.match(data["created"])
    owners = assert_candlepin(client.get("/candlepin/users/admin/owners", **ADMIN), 200)
    assert [o["key"] for o in owners] == ["ACME"]
    assert_candlepin(client.get("/candlepin/users/viewer/owners", **ADMIN), 404)


def test_owner_hypervisors_paged_and_filtered(client, org):
    checkin(client, "/candlepin", report_body(("h1", []), ("h2", []), ("h3", [])))
    response = client.get("/candlepin/owners/ACME/hypervisors?page=1&per_page=2", **VIEWER)
    data = assert_candlepin(response, 200)
    assert len(data) == 2 and response["X-total-count"] == "3"
    one = assert_candlepin(client.get("/candlepin/owners/ACME/hypervisors?hypervisor_id=H2", **VIEWER), 200)
    assert [h["hypervisorId"]["hypervisorId"] for h in one] == ["h2"]
    assert_candlepin(client.get("/candlepin/owners/ACME/hypervisors?page=x", **VIEWER), 400)


def test_authentication_and_roles(client, org):
    body = report_body(("h1", []))
    assert_candlepin(checkin(client, "/candlepin", body, auth={}), 401)
    assert_candlepin(checkin(client, "/candlepin", body, auth=basic("virtwho", "wrong")), 401)
    malformed = {"HTTP_AUTHORIZATION": "Basic b'dmlydHdobzpyZXBvcnRlci1wYXNzLTE='"}
    assert_candlepin(checkin(client, "/candlepin", body, auth=malformed), 401)
    assert_candlepin(checkin(client, "/candlepin", body, auth=VIEWER), 404)
    assert_candlepin(checkin(client, "/candlepin", body, auth=STRANGER), 404)
    assert_candlepin(checkin(client, "/candlepin", body, owner="NOPE"), 404)
    assert not Report.objects.exists()
    created = assert_candlepin(checkin(client, "/candlepin", body, auth=ADMIN), 200)
    # The reporter may read its org's jobs, nothing else.
    assert_candlepin(job(client, "/candlepin", created["id"], auth=REPORTER), 200)
    assert_candlepin(job(client, "/candlepin", created["id"], auth=STRANGER), 404)
    assert_candlepin(client.get("/candlepin/owners/ACME", **REPORTER), 404)
    assert_candlepin(client.get("/candlepin/owners/ACME/hypervisors", **REPORTER), 404)
    assert_candlepin(client.put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=x",
                                **STRANGER), 404)


def test_jobs_errors(client, org):
    assert_candlepin(job(client, "/candlepin", "no-such-job"), 404)
    assert_candlepin(job(client, "/candlepin", "0c0ffee0-0000-0000-0000-000000000000"), 404)
    assert_candlepin(client.get("/candlepin/jobs/", **REPORTER), 400)


def test_states_are_only_the_six_words(client, org):
    for i in range(3):
        checkin(client, "/candlepin", report_body((f"h{i}", [])), query=f"?reporter_id=r{i}")
    client.put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=r1", **REPORTER)
    for report in Report.objects.all():
        assert job(client, "/candlepin", str(report.uuid)).json()["state"] in STATES


def test_method_not_allowed_and_unknown_paths_are_json(client, org):
    assert_candlepin(client.delete("/candlepin/status"), 405)
    data = assert_candlepin(client.get("/rhsm/consumers/abc/owner", **REPORTER), 404)
    assert data["displayMessage"] and data["requestUuid"]


def test_report_moving_registered_guest_reentitles_it(client, org):
    """S2 through HTTP (eager tasks here; tests/test_ingest_worker.py uses a real worker)."""
    subscribe(org, "VDC", 2)
    checkin(client, "/candlepin", report_body(("esx1", ["g1"]), ("esx2", [])))
    g1 = guest(org, "g1")
    esx1, esx2 = System.objects.get(hypervisor_id="esx1"), System.objects.get(hypervisor_id="esx2")
    assert g1.entitlements.get().pool.requires_host_id == esx1.id
    checkin(client, "/candlepin", report_body(("esx1", []), ("esx2", ["g1"])))
    assert g1.entitlements.get().pool.requires_host_id == esx2.id


def test_api_token_as_basic_password(client, org):
    """virt-who can hold a reporter token instead of a person's password."""
    _, reporter_token = orgs.create_token(org, "virt-who-esx", "reporter")
    _, viewer_token = orgs.create_token(org, "dashboards", "viewer")
    as_token = basic("virt-who", reporter_token)
    created = assert_candlepin(checkin(client, "/candlepin", report_body(("t1", [])), auth=as_token), 200)
    assert Report.objects.get(uuid=created["id"]).principal == "token:virt-who-esx"
    assert_candlepin(job(client, "/candlepin", created["id"], auth=as_token), 200)
    assert_candlepin(client.put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=r1", **as_token), 200)
    assert_candlepin(checkin(client, "/candlepin", report_body(("t2", [])), owner="OTHER",
                             auth=as_token), 404)
    assert_candlepin(checkin(client, "/candlepin", report_body(("t3", [])),
                             auth=basic("x", viewer_token)), 404)
    assert_candlepin(checkin(client, "/candlepin", report_body(("t4", [])),
                             auth=basic("x", reporter_token + "x")), 401)
    token = org.api_tokens.get(name="virt-who-esx")
    orgs.revoke_token(org, token.pk)
    assert_candlepin(checkin(client, "/candlepin", report_body(("t5", [])), auth=as_token), 401)
