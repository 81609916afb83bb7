"""The real client library (``rhsm==1.19.2``, what virt-who uses) against ``manage.py serve``
over HTTPS with certificate verification: wire compatibility, not just the contract.

One server process for the module (tasks eager: a check-in is applied inside its request);
the transactional test database is flushed between tests, so each test makes its own data.
"""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest
from rhsm.connection import (
    RateLimitExceededException,
    RestlibException,
    UEPConnection,
    UnauthorizedException,
)

from hypervisors.models import GuestId, Report
from orgs import services as orgs
from orgs.models import System
from tests import rhsm_helper
from tests.rhsm_helper import connect, hypervisor_heartbeat, wait_for_job
from tests.scenario import acme

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # 1.19.2 itself uses ssl.PROTOCOL_SSLv23 and locale.getdefaultlocale.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:rhsm.connection"),
]

PASSWORD = "reporter-pass-1"
STATES = {"CREATED", "WAITING", "RUNNING", "FINISHED", "FAILED", "CANCELED"}
QUEUE_LIMIT = 20


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    server = rhsm_helper.start_server(tmp_path_factory.mktemp("sam-serve"),
                                      env={"SAM_REPORT_ORG_QUEUE_LIMIT": str(QUEUE_LIMIT)})
    try:
        rhsm_helper.configure_rhsm(server, tmp_path_factory.mktemp("rhsm"))
        yield server
    finally:
        rhsm_helper.stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-6000:]


@pytest.fixture
def org(server):
    org = acme()
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    orgs.create_org("OTHER", "Other Corp")
    return org


def guest(uuid: str, active: int = 1) -> dict:
    return {"guestId": uuid, "state": 1 if active else 5,
            "attributes": {"virtWhoType": "esx", "active": active}}


def mapping(*hosts) -> dict:
    """The association as virt-who serialises it for ``hypervisors_async`` (guests sorted)."""
    return {"hypervisors": [
        {"hypervisorId": {"hypervisorId": hv}, "name": name,
         "guestIds": [guest(g) for g in sorted(guests)],
         "facts": {"cpu.cpu_socket(s)": "2", "hypervisor.type": "VMware ESXi",
                   "hypervisor.version": "7.0.3", "hypervisor.cluster": "Cluster1",
                   "dmi.system.uuid": f"4c4c4544-{hv}"}}
        for hv, name, guests in hosts]}


def reporter(reporter_id: str) -> SimpleNamespace:
    """virt-who passes its options object; 1.19.2 reads ``options.reporter_id``."""
    return SimpleNamespace(reporter_id=reporter_id)


def test_ping_status_and_async_checkin(org, tmp_path):
    conn = connect("virtwho", PASSWORD)
    assert conn.conn.headers["Authorization"].startswith("Basic ") and "b'" not in \
        conn.conn.headers["Authorization"]
    assert conn.ping()["result"] is True
    assert conn.conn.insecure is False and conn.conn.ca_dir.endswith("/ca/")
    untrusting = connect("virtwho", PASSWORD)
    untrusting.conn.ca_dir = str(tmp_path)  # no sam.pem: the certificate is really verified
    with pytest.raises(ssl.SSLError):
        untrusting.ping()
    status = conn.getStatus()
    assert status["result"] is True and status["standalone"] is True
    assert conn.has_capability("hypervisors_async") and conn.has_capability("hypervisors_heartbeat")

    job = conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01.example.com", ["g-2", "g-1"]),
                                                     ("esx-2", "esx02.example.com", [])),
                                 options=reporter("virt-who-host-1"))
    assert job["id"] and job["state"] in STATES and job["statusPath"] == f"/jobs/{job['id']}"
    assert job["key"] == "HypervisorUpdateJob" and job["owner"] == "ACME"
    assert conn.conn.headers["Content-type"] == "application/json"  # the client restored it

    done = wait_for_job(conn, job["id"])
    assert done["state"] == "FINISHED"
    result = done["resultData"]
    assert sorted(h["name"] for h in result["created"]) == ["esx01.example.com", "esx02.example.com"]
    assert result["updated"] == result["unchanged"] == result["failedUpdate"] == []

    hosts = {s.hypervisor_id: s for s in System.objects.filter(hypervisor_id__isnull=False)}
    assert set(hosts) == {"esx-1", "esx-2"}
    assert hosts["esx-1"].name == "esx01.example.com"
    assert {s.reporter_id for s in hosts.values()} == {"virt-who-host-1"}
    assert hosts["esx-1"].facts["hypervisor.type"] == "VMware ESXi"
    assert sorted(GuestId.objects.values_list("guest_uuid", "host__hypervisor_id")) == [
        ("g-1", "esx-1"), ("g-2", "esx-1")]
    report = Report.objects.get(uuid=job["id"])
    assert report.kind == Report.Kind.CHECKIN and report.reporter_id == "virt-who-host-1"
    assert report.principal == "virtwho"

    # virt-who re-sends the same report after a restart: answered at once, nothing re-applied.
    again = conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01.example.com", ["g-1", "g-2"]),
                                                       ("esx-2", "esx02.example.com", [])),
                                   options=reporter("virt-who-host-1"))
    again = wait_for_job(conn, again["id"])
    assert again["state"] == "FINISHED" and len(again["resultData"]["unchanged"]) == 2

    # A guest moves: the next report updates both hosts.
    moved = conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01.example.com", ["g-1"]),
                                                       ("esx-2", "esx02.example.com", ["g-2"])),
                                   options=reporter("virt-who-host-1"))
    moved = wait_for_job(conn, moved["id"])
    assert sorted(h["name"] for h in moved["resultData"]["updated"]) == [
        "esx01.example.com", "esx02.example.com"]
    assert GuestId.objects.get(guest_uuid="g-2").host.hypervisor_id == "esx-2"


def test_heartbeat_as_modern_rhsm_sends_it(org):
    conn = connect("virtwho", PASSWORD)
    job = conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01", ["g-1"]), ("esx-2", "esx02", [])),
                                 options=reporter("r1"))
    wait_for_job(conn, job["id"])
    System.objects.update(last_checkin=None)

    answer = hypervisor_heartbeat(conn, "ACME", "r1")
    assert answer["state"] == "FINISHED" and answer["key"] == "HypervisorHeartbeatUpdateJob"
    assert answer["resultData"] == 'Last hypervisor check-in updated for owner "ACME" by reporter: r1'
    assert not System.objects.filter(hypervisor_id__isnull=False, last_checkin__isnull=True).exists()
    # Retention: the heartbeat is recorded on the reporter's last report, no row is added.
    assert Report.objects.filter(reporter_id="r1").count() == 1
    assert answer["id"] == job["id"]
    assert Report.objects.get(uuid=job["id"]).last_heartbeat is not None
    assert wait_for_job(conn, answer["id"])["state"] == "FINISHED"

    # Another reporter's heartbeat leaves these hypervisors alone.
    System.objects.update(last_checkin=None)
    hypervisor_heartbeat(conn, "ACME", "someone-else")
    assert not System.objects.filter(last_checkin__isnull=False).exists()


def test_legacy_checkin_without_hypervisors_async(org, monkeypatch):
    """A server without ``hypervisors_async``: 1.19.2 falls back to ``POST /hypervisors?owner=``
    with the old ``{hypervisorId: [guest, ...]}`` body and gets the result itself."""
    real = UEPConnection._load_manager_capabilities

    def without_async(self):
        return [c for c in real(self) if c != "hypervisors_async"]

    monkeypatch.setattr(UEPConnection, "_load_manager_capabilities", without_async)
    conn = connect("virtwho", PASSWORD)
    assert not conn.has_capability("hypervisors_async")
    result = conn.hypervisorCheckIn("ACME", "", {"legacy-1": [guest("g-1"), guest("g-2", active=0)],
                                                 "legacy-2": []})
    assert sorted(h["name"] for h in result["created"]) == ["legacy-1", "legacy-2"]
    assert result["failedUpdate"] == []
    assert list(Report.objects.values_list("kind", flat=True)) == [Report.Kind.LEGACY]
    assert sorted(GuestId.objects.values_list("guest_uuid", "host__hypervisor_id")) == [
        ("g-1", "legacy-1"), ("g-2", "legacy-1")]


def _code(exc: Exception) -> str:
    return str(exc.code)


def test_wrong_password_is_401_and_stores_nothing(org):
    for user, password in (("virtwho", "wrong-password"), ("nobody", PASSWORD)):
        conn = connect(user, password)
        assert conn.ping()["result"] is True  # the status needs no credentials
        with pytest.raises((RestlibException, UnauthorizedException)) as caught:
            conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01", ["g-1"])),
                                   options=reporter("r1"))
        assert _code(caught.value) == "401"
    assert not Report.objects.exists() and not System.objects.exists()


def test_org_not_visible_is_404(org):
    conn = connect("virtwho", PASSWORD)
    for owner in ("OTHER", "NOPE"):
        with pytest.raises(RestlibException) as caught:
            conn.hypervisorCheckIn(owner, "", mapping(("esx-1", "esx01", [])), options=reporter("r1"))
        assert _code(caught.value) == "404"
        assert str(caught.value) == f"Organization with id {owner} could not be found."
        with pytest.raises(RestlibException) as caught:
            hypervisor_heartbeat(conn, owner, "r1")
        assert _code(caught.value) == "404"
    assert not Report.objects.exists() and not System.objects.exists()


def test_malformed_basic_header_of_unpatched_client_is_refused(org):
    with rhsm_helper.unpatched_rhsm(retry_after=False):
        conn = connect("virtwho", PASSWORD)
        header = conn.conn.headers["Authorization"]
        assert header.startswith("Basic b'")  # the 1.19.2 defect on Python 3
        with pytest.raises((RestlibException, UnauthorizedException)) as caught:
            conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01", ["g-1"])),
                                   options=reporter("r1"))
        assert _code(caught.value) == "401"
    assert not Report.objects.exists() and not System.objects.exists()


def test_backpressure_retry_after_reaches_the_client(org):
    Report.objects.bulk_create([Report(org=org, reporter_id=f"busy-{i}", state=Report.State.CREATED)
                                for i in range(QUEUE_LIMIT)])
    body = mapping(("esx-1", "esx01", []))
    conn = connect("virtwho", PASSWORD)
    with pytest.raises(RateLimitExceededException) as caught:
        conn.hypervisorCheckIn("ACME", "", body, options=reporter("r1"))
    assert _code(caught.value) == "429" and caught.value.retry_after == 60
    with rhsm_helper.unpatched_rhsm(auth=False):
        with pytest.raises(RateLimitExceededException) as caught:
            connect("virtwho", PASSWORD).hypervisorCheckIn("ACME", "", body, options=reporter("r1"))
    # 1.19.2 looks only for a lower-case "retry-after" (then waits its default 30 s).
    assert caught.value.retry_after is None
    assert Report.objects.count() == QUEUE_LIMIT


def test_owner_reads_and_job_status_path(org):
    """What subscription-manager and older virt-who read besides the check-in."""
    orgs.set_member_role(org, "admin", "admin", password="admin-pass-1")
    conn = connect("admin", "admin-pass-1")
    assert [o["key"] for o in conn.getOwnerList("admin")] == ["ACME"]
    owner = conn.conn.request_get("/owners/ACME")  # 1.19.2's getOwner() is /consumers/{uuid}/owner
    assert owner["key"] == "ACME" and owner["displayName"] == "ACME Corp"
    job = conn.hypervisorCheckIn("ACME", "", mapping(("esx-1", "esx01", ["g-1"]), ("esx-2", "esx02", [])),
                                 options=reporter("r1"))
    assert conn.updateJobStatus(job)["state"] == "FINISHED"  # follows statusPath
    hypervisors = conn.getOwnerHypervisors("ACME", ["ESX-2"])
    assert [h["hypervisorId"]["hypervisorId"] for h in hypervisors] == ["esx-2"]
    assert len(conn.getOwnerHypervisors("ACME")) == 2
