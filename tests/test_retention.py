"""Retention of check-in history (performance.md R10, issue 8 item 7) and what clients see of a
failed job: heartbeats and identical re-reports add no rows, payloads are dropped after
``SAM_REPORT_PAYLOAD_DAYS``, history past ``SAM_HISTORY_DAYS`` is pruned by a periodic task.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from hypervisors import ingest, reports
from hypervisors.models import GuestHostInterval, Report
from orgs import services as orgs
from sam import dashboard
from subscriptions.models import CoverageSnapshot, EntitlementEvent
from tests.scenario import acme, guest, report, subscribe

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "reporter-pass-1"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def org():
    org = acme()
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    return org


def _auth() -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(
        f"virtwho:{PASSWORD}".encode()).decode()}


def _body(hosts: dict[str, list[str]]) -> bytes:
    return json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": hv}, "name": hv, "guestIds": guests}
        for hv, guests in hosts.items()]}).encode()


def _checkin(client, body: bytes, reporter: str = "r1") -> dict:
    response = client.post(f"/candlepin/hypervisors/ACME?reporter_id={reporter}", data=body,
                           content_type="text/plain", **_auth())
    assert response.status_code == 200, response.content
    return response.json()


def _heartbeat(client, reporter: str = "r1") -> dict:
    response = client.put(f"/candlepin/hypervisors/ACME/heartbeat?reporter_id={reporter}",
                          **_auth())
    assert response.status_code == 200, response.content
    return response.json()


def _poll(client, job_id: str) -> dict:
    response = client.get(f"/candlepin/jobs/{job_id}", **_auth())
    assert response.status_code == 200
    return response.json()


# --- Heartbeats and identical re-reports update a row ----------------------------------------

def _live(base: str, method: str, path: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=body, method=method,
                                     headers={"Authorization": _auth()["HTTP_AUTHORIZATION"],
                                              "Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_100_heartbeats_add_no_report_row(org, live_server):
    """Through real HTTP, as virt-who sends them."""
    base = live_server.url
    job = _live(base, "POST", "/candlepin/hypervisors/ACME?reporter_id=r1",
                _body({"esx1": ["g1"]}))
    rows = Report.objects.count()
    answers = [_live(base, "PUT", "/candlepin/hypervisors/ACME/heartbeat?reporter_id=r1")
               for _ in range(100)]
    assert Report.objects.count() == rows
    assert {a["id"] for a in answers} == {job["id"]}  # the reporter's last report
    assert all(a["state"] == "FINISHED" and a["key"] == "HypervisorHeartbeatUpdateJob"
               for a in answers)
    polled = _live(base, "GET", f"/candlepin/jobs/{answers[-1]['id']}")  # what virt-who polls
    assert polled["state"] == "FINISHED"
    assert polled["resultData"]["created"][0]["name"] == "esx1"  # the check-in's result
    row = Report.objects.get(uuid=job["id"])
    assert row.repeats == 100 and row.last_heartbeat == row.last_seen is not None


def test_first_heartbeat_of_a_new_reporter_adds_one_row_then_none(client, org):
    first = _heartbeat(client, "fresh")
    assert Report.objects.filter(reporter_id="fresh").count() == 1
    assert _poll(client, first["id"])["state"] == "FINISHED"
    for _ in range(20):
        assert _heartbeat(client, "fresh")["id"] == first["id"]
    assert Report.objects.filter(reporter_id="fresh").count() == 1


def test_identical_re_reports_update_one_row(client, org):
    body = _body({"esx1": ["g1"], "esx2": []})
    applied = _checkin(client, body)
    first_repeat = _checkin(client, body)
    assert first_repeat["state"] == "FINISHED" and first_repeat["id"] != applied["id"]
    rows = Report.objects.count()
    for _ in range(30):
        again = _checkin(client, body)
        assert again["id"] == first_repeat["id"] and again["state"] == "FINISHED"
        assert sorted(h["name"] for h in again["resultData"]["unchanged"]) == ["esx1", "esx2"]
    assert Report.objects.count() == rows
    row = Report.objects.get(uuid=first_repeat["id"])
    assert row.repeats == 30 and row.same_as.uuid.hex == applied["id"].replace("-", "")
    assert row.diff == {"identical_to": applied["id"]}
    # A changed report is applied and gets its own row again.
    changed = _checkin(client, _body({"esx1": ["g1", "g2"], "esx2": []}))
    assert Report.objects.count() == rows + 1 and changed["state"] == "CREATED"


def test_dashboard_reporter_health_reads_folded_rows(client, org):
    body = _body({"esx1": ["g1"]})
    applied = _checkin(client, body)
    repeat = _checkin(client, body)
    hours = timezone.now() - timedelta(hours=1)
    # The reporter sent the report 5 h ago, and its identical repeats every hour since.
    Report.objects.filter(uuid=applied["id"]).update(created=hours - timedelta(hours=4),
                                                     finished=hours - timedelta(hours=4))
    Report.objects.filter(uuid=repeat["id"]).update(created=hours - timedelta(hours=3),
                                                    finished=hours, last_seen=hours, repeats=3)
    _heartbeat(client)
    (rep,) = [r for r in dashboard.reporter_health(org, timezone.now()) if r.reporter_id == "r1"]
    assert rep.last_checkin == hours  # the last identical report, not the first
    assert timezone.now() - rep.last_heartbeat < timedelta(minutes=1)
    assert abs(rep.usual_interval - timedelta(hours=1)) < timedelta(minutes=1)
    assert rep.warnings == []


# --- Pruning -----------------------------------------------------------------------------------

def _aged(org, days: float, **fields) -> Report:
    when = timezone.now() - timedelta(days=days)
    row = Report.objects.create(org=org, reporter_id="old", state=Report.State.FINISHED,
                                payload=b"x" * 100, payload_hash="h", payload_size=100,
                                result={"created": [], "updated": [], "unchanged": [],
                                        "failedUpdate": []},
                                diff={"counts": {"guests_added": 1}}, **fields)
    Report.objects.filter(pk=row.pk).update(created=when, finished=when)
    return row


def test_pruning_removes_old_payloads_and_keeps_diffs(org, settings):
    settings.SAM_REPORT_PAYLOAD_DAYS = 14
    old, recent = _aged(org, 20), _aged(org, 3)
    waiting = Report.objects.create(org=org, state=Report.State.CREATED, payload=b"y")
    Report.objects.filter(pk=waiting.pk).update(created=timezone.now() - timedelta(days=30))
    assert reports.drop_old_payloads() == 1
    old.refresh_from_db()
    assert old.payload is None
    assert (old.payload_hash, old.payload_size) == ("h", 100)
    assert old.diff == {"counts": {"guests_added": 1}} and old.result["failedUpdate"] == []
    assert Report.objects.get(pk=recent.pk).payload is not None
    assert Report.objects.get(pk=waiting.pk).payload is not None  # not finished: still needed
    assert reports.drop_old_payloads() == 0


def test_prune_history_by_age(org, settings):
    settings.SAM_HISTORY_DAYS = 400
    subscribe(org, "VDC", 1)
    report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    report(org, "esx1", [])  # closes g1's stay on esx1
    ancient = timezone.now() - timedelta(days=500)
    EntitlementEvent.objects.filter(system=g1).update(created=ancient)
    kept_events = EntitlementEvent.objects.exclude(system=g1).count()
    GuestHostInterval.objects.filter(ended__isnull=False).update(started=ancient, ended=ancient)
    CoverageSnapshot.objects.create(org=org, day=(ancient).date())
    CoverageSnapshot.objects.create(org=org, day=timezone.localdate())
    old, recent = _aged(org, 401), _aged(org, 399)
    still_active = _aged(org, 450)  # answered identical reports until yesterday
    Report.objects.filter(pk=still_active.pk).update(last_seen=timezone.now() - timedelta(days=1))
    open_ = Report.objects.create(org=org, state=Report.State.CREATED)
    Report.objects.filter(pk=open_.pk).update(created=ancient)

    out = StringIO()
    call_command("run_sweeps", stdout=out)  # the same task beat runs daily
    assert "prune_history: removed" in out.getvalue()
    assert "1 reports" in out.getvalue()
    assert set(Report.objects.filter(pk__in=[old.pk, recent.pk, still_active.pk, open_.pk])
               .values_list("pk", flat=True)) == {recent.pk, still_active.pk, open_.pk}
    assert EntitlementEvent.objects.filter(system=g1).count() == 0
    assert EntitlementEvent.objects.count() == kept_events
    assert not GuestHostInterval.objects.filter(ended__isnull=False).exists()
    assert list(CoverageSnapshot.objects.values_list("day", flat=True)) == [timezone.localdate()]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SAM_HISTORY_DAYS", "89", "SAM_HISTORY_DAYS=89 is below the minimum 90"),
    ("SAM_REPORT_PAYLOAD_DAYS", "two weeks", "SAM_REPORT_PAYLOAD_DAYS='two weeks' is not an integer"),
    ("SAM_REPORT_ORG_QUEUE_LIMIT", "0", "SAM_REPORT_ORG_QUEUE_LIMIT=0 is below the minimum 1"),
])
def test_retention_and_limit_settings_are_parsed_strictly(tmp_path, name, value, message):
    environ = {**os.environ, name: value, "SAM_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT,
                            env={**environ, "DJANGO_SETTINGS_MODULE": "sam.settings"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr


# --- A failed job shows no internal error text -------------------------------------------------

def test_failed_job_shows_a_reference_not_the_error(client, org, monkeypatch, caplog,
                                                     admin_client):
    def broken(*args, **kwargs):
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")

    monkeypatch.setattr(ingest, "apply_entries", broken)
    with caplog.at_level(logging.ERROR, logger="hypervisors.reports"):
        job = _checkin(client, _body({"esx1": ["g1"]}))
    polled = _poll(client, job["id"])
    assert polled["state"] == "FAILED"
    message = polled["resultData"]["message"]
    assert "NUL" not in json.dumps(polled) and "ValueError" not in json.dumps(polled)
    row = Report.objects.get(uuid=job["id"])
    reference = row.error.split("]")[0].removeprefix("[reference ")
    assert f"(reference {reference})" in message
    assert "ValueError: A string literal cannot contain NUL" in row.error
    # The log has the reference, the full text and the traceback.
    (record,) = [r for r in caplog.records if reference in r.getMessage()]
    assert "cannot contain NUL" in record.getMessage() and record.exc_info

    admin = orgs.set_member_role(org, "boss", "admin", password=PASSWORD)
    client.force_login(admin)
    api = client.get(f"/api/v1/orgs/ACME/reports/{job['id']}/").json()
    assert api["error"] == message and "NUL" not in json.dumps(api)
    page = client.get(reverse("hypervisors:report_detail",
                              kwargs={"org_key": "ACME", "uuid": job["id"]})).content.decode()
    assert reference in page and "cannot contain NUL" not in page
    # The operators' admin shows the whole text.
    admin_page = admin_client.get(reverse("admin:hypervisors_report_change", args=[row.pk]))
    assert "cannot contain NUL" in admin_page.content.decode()
