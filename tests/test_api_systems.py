"""REST API v1: systems, hypervisors and reports, through the fixed actors."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hypervisors import reports
from hypervisors.models import GuestId, Report
from orgs.models import System
from tests.api_actors import READ, WRITE, make_actors
from tests.factories import SystemFactory
from tests.scenario import acme, guest, physical, report, subscribe
from tests.test_api_orgs import check

# Registration and reports enqueue resolution on commit (run eagerly in tests).
pytestmark = pytest.mark.django_db(transaction=True)

BASE = "/api/v1/orgs/ACME"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The actors' passwords are hashed on every test: a cheap hasher keeps the matrix fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def checkin(org, mapping: dict[str, list[str]], reporter_id: str = "vw1") -> Report:
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": host}, "name": host,
                             "guestIds": [{"guestId": g} for g in guests]}
                            for host, guests in mapping.items()]}
    created = reports.accept_checkin(org, json.dumps(body).encode(), reporter_id=reporter_id)
    return Report.objects.get(pk=created.pk)


@pytest.fixture
def world():
    """ACME with VDC ×1: esx1 reports g1 (registered, covered) and g2 (only reported)."""
    org = acme()
    subscribe(org, "VDC", 1)
    checkin(org, {"esx1": ["g1", "g2"]})
    g1 = guest(org, "g1")
    return org, make_actors(org), g1, System.objects.get(org=org, hypervisor_id="esx1")


# --- Permission matrix ------------------------------------------------------------------------

def test_matrix_systems(world):
    org, actors, g1, esx1 = world
    check(actors, "get", f"{BASE}/systems/", READ)
    check(actors, "get", f"{BASE}/systems/{g1.uuid}/", READ)
    created = check(actors, "post", f"{BASE}/systems/", {**WRITE, "admin": 201},
                    {"name": "web1", "installed_products": [{"productId": "479"}]})
    new = created["admin"].json()["uuid"]
    check(actors, "patch", f"{BASE}/systems/{new}/", {**WRITE, "admin": 200}, {"name": "web2"})
    check(actors, "delete", f"{BASE}/systems/{new}/", {**WRITE, "admin": 204})
    assert not System.objects.filter(uuid=new).exists()


def test_matrix_hypervisors_and_reports(world):
    org, actors, g1, esx1 = world
    check(actors, "get", f"{BASE}/hypervisors/", READ)
    check(actors, "get", f"{BASE}/hypervisors/{esx1.uuid}/", READ)
    check(actors, "get", f"{BASE}/hypervisors/{esx1.uuid}/guests/", READ)
    check(actors, "get", f"{BASE}/reports/", READ)
    check(actors, "get", f"{BASE}/reports/{Report.objects.get(org=org).uuid}/", READ)


# --- Systems ----------------------------------------------------------------------------------

def test_system_detail_explains_coverage_by_host_and_subscription(world):
    org, actors, g1, esx1 = world
    response = actors.clients["viewer"].get(f"{BASE}/systems/{g1.uuid}/")
    assert response.status_code == 200 and response["ETag"]
    data = response.json()
    assert data["host"] == {"uuid": str(esx1.uuid), "name": "esx1"}
    assert data["compliance"]["status"] == "valid" and data["compliance"]["products"] == {"479": "valid"}
    (explanation,) = data["explanation"]
    assert explanation["status"] == "valid" and explanation["product_id"] == "479"
    links = {link["kind"]: link for link in explanation["chain"]}
    assert links["host"]["label"] == "esx1" and links["host"]["id"] == str(esx1.uuid)
    assert links["subscription"]["label"].startswith("VDC")
    (ent,) = data["entitlements"]
    assert ent["pool_type"] == "ENTITLEMENT_DERIVED" and ent["product"] == "RHEL-G"
    assert [(i["host_name"], i["ended"]) for i in data["host_timeline"]] == [("esx1", None)]
    assert data["facts"]["virt.uuid"] == "g1" and data["installed_products"][0]["productId"] == "479"


def test_system_list_rows_and_filters(world):
    org, actors, g1, esx1 = world
    physical(org, "db1")
    client = actors.clients["viewer"]

    def names(query: str = "") -> list[str]:
        response = client.get(f"{BASE}/systems/{query}")
        assert response.status_code == 200, response.content
        return sorted(row["name"] for row in response.json()["results"])

    assert names() == ["db1", "esx1", "g1"]
    assert names("?type=hypervisor") == ["esx1"]
    assert names("?is_guest=true") == ["g1"]
    assert names("?has_host=true") == ["g1"]
    assert names("?has_host=false") == ["db1", "esx1"]
    assert names("?name=DB") == ["db1"]
    assert names("?hypervisor_id=ESX1") == ["esx1"]
    rows = client.get(f"{BASE}/systems/?ordering=name&limit=2").json()
    assert [r["name"] for r in rows["results"]] == ["db1", "esx1"] and rows["next"]
    assert [r["name"] for r in client.get(rows["next"]).json()["results"]] == ["g1"]
    row = next(r for r in client.get(f"{BASE}/systems/").json()["results"] if r["name"] == "g1")
    assert row["host"] == {"uuid": str(esx1.uuid), "name": "esx1"} and row["is_guest"] is True
    assert set(row) == {"uuid", "name", "type", "is_guest", "hypervisor_id", "host",
                        "host_unknown_since", "last_checkin", "registered_at"}


def test_system_write_flow(world):
    org, actors, g1, esx1 = world
    admin = actors.clients["admin"]
    created = admin.post(f"{BASE}/systems/", {"name": "web1", "facts": {"cpu.cpu_socket(s)": 2},
                                              "installed_products": [{"productId": "479"}]},
                         format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["facts"] == {"cpu.cpu_socket(s)": "2"} and data["compliance"]["status"] == "invalid"
    url = f"{BASE}/systems/{data['uuid']}/"
    stale = admin.patch(url, {"name": "x"}, format="json", HTTP_IF_MATCH='"1"')
    assert stale.status_code == 412
    changed = admin.patch(url, {"name": "web2", "autoheal": False}, format="json",
                          HTTP_IF_MATCH=created["ETag"])
    assert changed.status_code == 200 and changed.json()["name"] == "web2"
    assert changed.json()["autoheal"] is False
    bad = admin.post(f"{BASE}/systems/", {"name": "x", "type": "toaster"}, format="json")
    assert bad.status_code == 400 and "type" in bad.json()["error"]["fields"]
    bad = admin.patch(url, {"installed_products": [{"productName": "no id"}]}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    assert admin.delete(url).status_code == 204
    assert admin.get(url).status_code == 404


def test_malformed_and_foreign_uuids_are_404(world):
    org, actors, g1, esx1 = world
    admin = actors.clients["admin"]
    for url in (f"{BASE}/systems/not-a-uuid/", f"{BASE}/systems/{uuid.uuid4()}/",
                f"{BASE}/hypervisors/nope/", f"{BASE}/reports/nope/", f"{BASE}/hypervisors/{g1.uuid}/"):
        response = admin.get(url)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", url
    other = actors.clients["other_admin"]
    assert other.get(f"/api/v1/orgs/OTHER/systems/{g1.uuid}/").status_code == 404
    assert other.delete(f"/api/v1/orgs/OTHER/systems/{g1.uuid}/").status_code == 404
    assert System.objects.filter(pk=g1.pk).exists()


# --- Hypervisors and reports -------------------------------------------------------------------

def test_hypervisor_detail_lists_guests_and_history(world):
    org, actors, g1, esx1 = world
    client = actors.clients["viewer"]
    data = client.get(f"{BASE}/hypervisors/{esx1.uuid}/").json()
    assert data["hypervisor_id"] == "esx1" and data["reporter_id"] == "vw1"
    assert data["guest_count"] == 2 and data["registered_guest_count"] == 1
    guests = {g["guest_uuid"]: g for g in data["guests"]}
    assert guests["g1"]["system"] == {"uuid": str(g1.uuid), "name": "g1"}
    assert guests["g2"]["system"] is None and guests["g2"]["conflict"] is False
    assert [e["product"] for e in data["entitlements"]] == ["VDC"]
    (first,) = data["history"]
    assert first["state"] == "FINISHED" and first["hypervisor_count"] == 1
    # g2 moves to esx2: a second report touches esx1 (removal) and esx2
    second = checkin(org, {"esx1": ["g1"], "esx2": ["g2"]})
    data = client.get(f"{BASE}/hypervisors/{esx1.uuid}/").json()
    assert [r["uuid"] for r in data["history"]] == [str(second.uuid), first["uuid"]]
    paged = client.get(f"{BASE}/hypervisors/{esx1.uuid}/guests/?limit=1").json()
    assert [g["guest_uuid"] for g in paged["results"]] == ["g1"] and paged["next"] is None
    hv = client.get(f"{BASE}/hypervisors/?name=ESX").json()["results"]
    assert [(h["name"], h["guest_count"]) for h in hv] == [("esx1", 1), ("esx2", 1)]


def test_hypervisor_filters_on_facts_and_reporter(world):
    org, actors, g1, esx1 = world
    report(org, "esx9", ["g9"], facts={"hypervisor.cluster": "c1", "hypervisor.type": "VMware ESXi"},
           reporter_id="vw2")
    client = actors.clients["viewer"]

    def names(query: str) -> list[str]:
        return [h["name"] for h in client.get(f"{BASE}/hypervisors/{query}").json()["results"]]

    assert names("?cluster=c1") == ["esx9"]
    assert names("?hypervisor_type=VMware%20ESXi") == ["esx9"]
    assert names("?reporter_id=vw1") == ["esx1"]
    assert names("?hypervisor_id=ESX9") == ["esx9"]
    assert names("?ordering=-guest_count") == ["esx1", "esx9"]
    row = client.get(f"{BASE}/hypervisors/?cluster=c1").json()["results"][0]
    assert row["cluster"] == "c1" and row["hypervisor_type"] == "VMware ESXi"


def test_reports_list_filters_and_detail_without_payload(world):
    org, actors, g1, esx1 = world
    # A reporter without a report yet: its heartbeat adds a row (later ones update it).
    heartbeat = reports.heartbeat(org, "vw2")
    client = actors.clients["viewer"]
    rows = client.get(f"{BASE}/reports/").json()
    assert rows["count"] == 2 and rows["results"][0]["uuid"] == str(heartbeat.uuid)
    assert [r["kind"] for r in client.get(f"{BASE}/reports/?kind=checkin").json()["results"]] == [
        "checkin"]
    assert client.get(f"{BASE}/reports/?reporter_id=zzz").json()["count"] == 0
    assert client.get(f"{BASE}/reports/?state=FINISHED").json()["count"] == 2
    checkin_row = Report.objects.get(org=org, kind="checkin")
    detail = client.get(f"{BASE}/reports/{checkin_row.uuid}/").json()
    assert detail["diff"]["hypervisors"]["created"] == ["esx1"]
    assert sorted(a[0] for a in detail["diff"]["guests"]["added"]) == ["g1", "g2"]
    assert detail["result"]["created"] and "payload" not in detail and detail["superseded_by"] is None


# --- Query budgets ----------------------------------------------------------------------------

def _count_queries(client, url: str, rows: int) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200 and len(response.json()["results"]) == rows
    return len(ctx.captured_queries)


def _grow(org, hub: System, total: int) -> None:
    """Up to ``total`` hosts h<i>, each with a registered guest vm<i> also reported by ``hub``."""
    now = timezone.now()
    for i in range(System.objects.filter(org=org, name__startswith="h").count(), total):
        host = SystemFactory(org=org, name=f"h{i}", type="hypervisor", hypervisor_id=f"h{i}")
        SystemFactory(org=org, name=f"vm{i}", is_guest=True, virt_uuid=f"vm{i}", current_host=host)
        GuestId.objects.create(org=org, host=host, guest_uuid=f"vm{i}", updated=now)
        GuestId.objects.create(org=org, host=hub, guest_uuid=f"vm{i}", updated=now)


@pytest.mark.django_db  # nothing here enqueues on commit: no flush needed
def test_list_endpoints_run_a_constant_number_of_queries():
    org = acme()
    client = make_actors(org).clients["viewer"]
    hub = SystemFactory(org=org, name="zhub", type="hypervisor", hypervisor_id="zhub")
    counts = {}
    for total in (5, 30):
        _grow(org, hub, total)
        counts[total] = (
            _count_queries(client, f"{BASE}/systems/?limit=500", 2 * total + 1),
            _count_queries(client, f"{BASE}/hypervisors/?limit=500", total + 1),
            _count_queries(client, f"{BASE}/hypervisors/{hub.uuid}/guests/?limit=500", total),
        )
    assert counts[5] == counts[30], counts
    assert max(counts[5]) <= 6, counts
    for _ in range(5):
        Report.objects.create(org=org, reporter_id="vw", state="FINISHED")
    assert _count_queries(client, f"{BASE}/reports/", 5) == _count_queries(
        client, f"{BASE}/reports/?limit=2", 2)
