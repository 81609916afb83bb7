"""The identical-report shortcut holds only while nothing else wrote what the report describes
(virt-who-api.md "Unchanged reports are cheap", issue 17).

The acceptance tests go through real HTTP (the live server) with a real Celery worker on
PostgreSQL; the other writers (admin guest list, edits, registration) are checked in-process.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from django.db import connection

from hypervisors import ingest, reports
from hypervisors import services as mapping
from hypervisors.models import GuestId, Report
from orgs import services as orgs
from orgs.models import System
from subscriptions import services as subs
from subscriptions.models import Entitlement
from tests import workers
from tests.scenario import acme, guest, report, subscribe

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "reporter-pass-1"


def _request(base: str, method: str, path: str, user: str = "virtwho", body: str | None = None):
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(f"{base}{path}", data=body.encode() if body else None,
                                     method=method,
                                     headers={"Authorization": f"Basic {token}",
                                              "Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def _body(hosts: dict[str, list[str]]) -> str:
    return json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": hv}, "name": f"{hv}.example.com",
         "guestIds": [{"guestId": g, "state": 1, "attributes": {"virtWhoType": "esx", "active": 1}}
                      for g in guests],
         "facts": {"hypervisor.type": "VMware ESXi"}} for hv, guests in hosts.items()]})


def _checkin(base: str, body: str, reporter: str) -> dict:
    status, job = _request(base, "POST", f"/candlepin/hypervisors/ACME?reporter_id={reporter}"
                           "&cloaked=False&env=", body=body)
    assert status == 200, job
    return job


def _finished(base: str, job: dict) -> dict:
    """Poll the job as virt-who does until it is done."""
    deadline = time.monotonic() + workers.WAIT
    while time.monotonic() < deadline:
        status, polled = _request(base, "GET", f"/candlepin/jobs/{job['id']}")
        assert status == 200
        if polled["state"] in ("FINISHED", "FAILED", "CANCELED"):
            return polled
        time.sleep(0.1)
    pytest.fail(f"job {job['id']} not finished")


def _covered_by(system_id: int, host: System | None) -> bool:
    return host is not None and Entitlement.objects.filter(
        system_id=system_id, pool__requires_host=host).exists()


def _host(hv: str) -> System | None:
    return System.objects.filter(hypervisor_id=hv).first()


@pytest.fixture
def live(transactional_db, live_server):
    """Org ACME with a reporter and an admin, a real worker, tasks sent to the broker."""
    workers.require_services()
    workers.flush_broker()
    org = acme()
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    orgs.set_member_role(org, "boss", "admin", password=PASSWORD)
    worker = workers.start_worker()
    try:
        with workers.tasks_to_broker():
            yield org, live_server.url
            workers.wait_idle()  # the last re-resolutions finish before the worker stops
    finally:
        worker.kill()
    workers.assert_clean(worker)


# --- Acceptance (issue 17) -------------------------------------------------------------------

@pytest.mark.worker
def test_deleted_hypervisor_comes_back_with_the_same_report(live):
    org, base = live
    subscribe(org, "VDC", 2)
    body = _body({"esx1": ["g1", "g2"]})
    first = _finished(base, _checkin(base, body, "r1"))
    assert [h["name"] for h in first["resultData"]["created"]] == ["esx1.example.com"]
    g1 = guest(org, "g1")
    workers.wait_until(lambda: _covered_by(g1.id, _host("esx1")), "g1 covered through esx1")

    # An admin deletes the hypervisor through the API: its derived pool and g1's entitlement go.
    status, _ = _request(base, "DELETE", f"/api/v1/orgs/ACME/systems/{_host('esx1').uuid}/",
                         user="boss")
    assert status == 204 and _host("esx1") is None
    assert not Entitlement.objects.filter(system=g1, pool__requires_host__isnull=False).exists()

    # virt-who restarts and sends the very same bytes: applied in full, not answered "unchanged".
    again = _checkin(base, body, "r1")
    assert again["state"] == "CREATED"
    result = _finished(base, again)["resultData"]
    assert [h["name"] for h in result["created"]] == ["esx1.example.com"]
    assert result["unchanged"] == result["updated"] == []
    esx1 = _host("esx1")
    assert sorted(GuestId.objects.filter(host=esx1).values_list("guest_uuid", flat=True)) == [
        "g1", "g2"]
    workers.wait_until(lambda: _covered_by(g1.id, _host("esx1")), "g1 covered again")
    assert System.objects.get(pk=g1.pk).current_host_id == esx1.id
    assert subs.compliance_for(System.objects.get(pk=g1.pk)).status == "valid"


@pytest.mark.worker
def test_another_reporters_change_is_undone_by_the_same_report(live):
    org, base = live
    subscribe(org, "VDC", 2)
    body_a = _body({"esx1": ["g1"]})
    _finished(base, _checkin(base, body_a, "reporter-a"))
    g1 = guest(org, "g1")
    workers.wait_until(lambda: _covered_by(g1.id, _host("esx1")), "g1 covered through esx1")

    # Reporter B lists the same host without guests: g1 becomes host-unknown (keeps coverage).
    result = _finished(base, _checkin(base, _body({"esx1": []}), "reporter-b"))["resultData"]
    assert [h["name"] for h in result["updated"]] == ["esx1.example.com"]
    g1 = System.objects.get(pk=g1.pk)
    assert g1.current_host_id is None and g1.host_unknown_since is not None

    # A re-sends its unchanged report: its list is the complete list for that host again.
    again = _checkin(base, body_a, "reporter-a")
    assert again["state"] == "CREATED"
    result = _finished(base, again)["resultData"]
    assert [h["name"] for h in result["updated"]] == ["esx1.example.com"]
    assert list(GuestId.objects.filter(host=_host("esx1")).values_list("guest_uuid", flat=True)) \
        == ["g1"]
    g1 = System.objects.get(pk=g1.pk)
    assert g1.current_host_id == _host("esx1").id and g1.host_unknown_since is None
    workers.wait_until(lambda: _covered_by(g1.id, _host("esx1")), "g1 still covered by esx1")


def _row_versions(org) -> dict:
    """xmin (the writing transaction) of every guest-id row and hypervisor row, and the
    hypervisors' ``updated``: what bench/checkin.py P4 counts as rewritten."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM hypervisors_guestid WHERE org_id = %s", [org.id])
        guests = dict(cursor.fetchall())
        cursor.execute("SELECT id, updated FROM orgs_system WHERE org_id = %s "
                       "AND hypervisor_id IS NOT NULL", [org.id])
        hypervisors = dict(cursor.fetchall())
    return {"guests": guests, "hypervisors": hypervisors}


@pytest.mark.worker
def test_identical_report_with_no_other_writer_rewrites_nothing(live):
    """P4 keeps holding: answered at once, 0 guest or hypervisor rows rewritten — also after
    things that do not write this reporter's hypervisors (a heartbeat, another reporter's
    hypervisor, a registration of a guest)."""
    org, base = live
    hosts = {f"esx{i}": [f"g{i}-{j}" for j in range(20)] for i in range(10)}
    body = _body(hosts)
    _finished(base, _checkin(base, body, "r1"))
    _finished(base, _checkin(base, _body({"kvm1": ["k1"]}), "r2"))
    _request(base, "PUT", "/candlepin/hypervisors/ACME/heartbeat?reporter_id=r1")
    guest(org, "g1-1")
    before = _row_versions(org)
    checkins = dict(System.objects.filter(reporter_id="r1").values_list("id", "last_checkin"))
    for _ in range(3):
        started = time.monotonic()
        answer = _checkin(base, body, "r1")
        elapsed = time.monotonic() - started
        assert answer["state"] == "FINISHED", answer
        assert len(answer["resultData"]["unchanged"]) == 10
        assert answer["resultData"]["created"] == answer["resultData"]["updated"] == []
    assert _row_versions(org) == before
    after = dict(System.objects.filter(reporter_id="r1").values_list("id", "last_checkin"))
    assert all(after[pk] > checkins[pk] for pk in checkins)  # still counts as a check-in
    print(f"identical re-report answered in {elapsed * 1000:.0f} ms")  # informative, not P4


# --- Every other writer invalidates, through the one function --------------------------------

def _accept(org, hosts: dict[str, list[str]], reporter: str = "r1") -> Report:
    report_row = reports.accept_checkin(org, _body(hosts).encode(), reporter_id=reporter)
    return Report.objects.get(pk=report_row.pk)


@pytest.fixture
def applied():
    """ACME with r1's report of esx1 {g1} and esx2 {g2} applied (eager tasks)."""
    org = acme()
    first = _accept(org, {"esx1": ["g1"], "esx2": ["g2"]})
    assert first.state == "FINISHED" and first.written == 2
    assert set(System.objects.filter(hypervisor_id__isnull=False)
               .values_list("written_by_report", flat=True)) == {first.id}
    return org


def _shortcut_taken(org, hosts=None) -> bool:
    row = _accept(org, hosts or {"esx1": ["g1"], "esx2": ["g2"]})
    return "identical_to" in (row.diff or {})


def test_unrelated_changes_keep_the_shortcut(applied):
    org = applied
    report(org, "other-host", ["x1"])  # not one of r1's hypervisors
    guest(org, "g1")
    reports.heartbeat(org, "r1")
    assert _shortcut_taken(org)
    assert _shortcut_taken(org)


@pytest.mark.parametrize("writer", ["set_guest_list", "rename", "facts", "registration",
                                    "other_reporter", "legacy", "api_report", "merge_by_dmi"])
def test_other_writers_make_the_next_report_apply_in_full(applied, writer):
    org = applied
    esx1 = _host("esx1")
    if writer == "set_guest_list":
        mapping.set_guest_list(org, esx1, ["g1", "g9"])
    elif writer == "rename":
        mapping.update_system(org, esx1.uuid, name="renamed")
    elif writer == "facts":
        mapping.update_system(org, esx1.uuid, facts={"cpu.cpu_socket(s)": "4"})
    elif writer == "registration":  # subscription-manager registers the same hardware
        System.objects.filter(pk=esx1.pk).update(dmi_uuid="esx1")
        mapping.register_system(org, "esx1-box", facts={"dmi.system.uuid": "esx1"})
    elif writer == "other_reporter":
        _accept(org, {"esx1": ["g1"]}, reporter="r2")  # same content, another writer
    elif writer == "legacy":
        reports.legacy_checkin(org, json.dumps({"esx2": ["g2", "g3"]}).encode())
    elif writer == "api_report":
        report(org, "esx2", ["g2"])
    elif writer == "merge_by_dmi":  # another reporter names the same hardware by its uuid
        System.objects.filter(pk=esx1.pk).update(dmi_uuid="4c4c-esx1")
        reports.accept_checkin(org, json.dumps({"hypervisors": [
            {"hypervisorId": {"hypervisorId": "4c4c-esx1"}, "facts": {"dmi.system.uuid": "4c4c-esx1"},
             "guestIds": []}]}).encode(), reporter_id="r2")
        assert _host("4c4c-esx1").pk == esx1.pk
    full = _accept(org, {"esx1": ["g1"], "esx2": ["g2"]})
    assert "identical_to" not in (full.diff or {}), writer
    assert sorted(GuestId.objects.filter(host__hypervisor_id="esx1")
                  .values_list("guest_uuid", flat=True)) == ["g1"]
    assert _host("esx1").reporter_id == "r1"
    assert _shortcut_taken(org)  # and the one after that is cheap again


def test_unchanged_set_guest_list_keeps_the_shortcut(applied):
    same = [{"guestId": "g1", "attributes": {"virtWhoType": "esx", "active": 1}}]
    mapping.set_guest_list(applied, _host("esx1"), same)  # writes nothing
    assert _shortcut_taken(applied)


def test_invalidate_function_is_the_hook(applied):
    """The function other writers (e.g. consumer registration) call, in their transaction."""
    assert reports.invalidate_report_shortcut is ingest.invalidate_report_shortcut
    assert ingest.invalidate_report_shortcut([_host("esx2").pk]) == 1
    assert ingest.invalidate_report_shortcut([_host("esx2").pk]) == 0
    assert not _shortcut_taken(applied)


def test_deleted_hypervisor_through_the_service_is_recreated(applied):
    org = applied
    mapping.delete_system(org, _host("esx1").uuid)
    again = _accept(org, {"esx1": ["g1"], "esx2": ["g2"]})
    assert [h["name"] for h in again.result["created"]] == ["esx1.example.com"]
    assert [h["name"] for h in again.result["unchanged"]] == ["esx2.example.com"]
