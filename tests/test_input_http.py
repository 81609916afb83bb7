"""Hostile input and request limits through real HTTP: ``manage.py serve`` (gunicorn, TLS).

NUL or an unpaired surrogate in Basic credentials, a 5,000-deep or NUL-carrying check-in, a
3 MB form post and a 10 MB check-in, as a client sends them over the wire. One server for the
module (tasks eager: a check-in is applied inside its request).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket

import pytest

from hypervisors.models import Report
from orgs import services as orgs
from orgs.models import System
from tests import rhsm_helper
from tests.scenario import acme

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "reporter-pass-1"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    server = rhsm_helper.start_server(tmp_path_factory.mktemp("sam-serve"))
    try:
        yield server
    finally:
        rhsm_helper.stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-6000:]


@pytest.fixture
def org(server):
    org = acme()
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    return org


def _basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, headers, body) of one request over TLS, verified against the server's CA."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(),
                                       timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Host": "127.0.0.1", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


REPORTER = {"Authorization": _basic(b"virtwho", PASSWORD.encode())}


def report(*hosts, facts=None) -> dict:
    return {"hypervisors": [{"hypervisorId": {"hypervisorId": hv}, "name": hv,
                             "facts": facts or {"hypervisor.type": "VMware ESXi"},
                             "guestIds": [{"guestId": g, "attributes": {"active": 1}} for g in guests]}
                            for hv, guests in hosts]}


@pytest.mark.parametrize("user,password", [
    (b"virt\x00who", PASSWORD.encode()), (b"virtwho", b"pass\x00word"),
    (b"virt\xed\xa0\x80who", PASSWORD.encode()), (b"virtwho", b"pass\xed\xb0\x80"),
])
def test_nul_or_surrogate_in_basic_credentials_is_a_400_in_each_shape(server, org, user, password):
    auth = {"Authorization": _basic(user, password)}
    status, headers, body = request(server, "GET", "/candlepin/owners/ACME", headers=auth)
    assert status == 400, body
    assert headers["x-candlepin-request-uuid"] and "displayMessage" in json.loads(body)
    status, _, body = request(server, "POST", "/rhsm/hypervisors/ACME?reporter_id=r1",
                              json.dumps(report(("esx1", ["g1"]))).encode(), auth)
    assert status == 400 and "displayMessage" in json.loads(body)
    status, _, body = request(server, "GET", "/api/v1/orgs/", headers=auth)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_input"
    assert not Report.objects.exists()


def test_deep_json_and_nul_checkins_are_refused_at_accept(server, org):
    deep = b"[" * 5000 + b"]" * 5000
    for path in ("/candlepin/hypervisors/ACME?reporter_id=r1", "/candlepin/hypervisors?owner=ACME"):
        status, _, body = request(server, "POST", path, deep, {
            **REPORTER, "Content-Type": "application/json"})
        assert status == 400, body
        assert "nested too deeply" in json.loads(body)["displayMessage"]
    # NUL in a fact: refused with 400 when the report is accepted (it used to be 200, FAILED).
    nul = json.dumps(report(("esx1", ["g1"]), facts={"hypervisor.type": "VMware\x00ESXi"}))
    assert "\\u0000" in nul
    status, _, body = request(server, "POST", "/candlepin/hypervisors/ACME?reporter_id=r1",
                              nul.encode(), {**REPORTER, "Content-Type": "application/json"})
    assert status == 400, body
    assert "NUL" in json.loads(body)["displayMessage"]
    lone = json.dumps({"esx1": ["g\ud800"]}).encode()
    status, _, body = request(server, "POST", "/candlepin/hypervisors?owner=ACME", lone,
                              {**REPORTER, "Content-Type": "application/json"})
    assert status == 400, body
    assert not Report.objects.exists() and not System.objects.exists()


def _raw_post_headers(server, path: str, length: int, first: bytes) -> str:
    """Send a request's headers and only the first bytes of its body; the status line."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {length}\r\n\r\n".encode() + first)
        answer = b""
        while b"\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def test_a_3mb_login_post_is_refused_before_it_is_read(server, org):
    # Only 64 KB of the announced 3 MB are ever sent: the answer comes without the rest.
    status_line = _raw_post_headers(server, "/accounts/login/", 3 * MB, b"username=" + b"a" * 65536)
    assert status_line.split()[1] == "413", status_line
    # The whole body, sent: refused all the same, in the API's shape on the API.
    status, _, body = request(server, "POST", "/api/v1/orgs/", b"{" + b" " * (3 * MB) + b"}",
                              {**REPORTER, "Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"


def test_a_10mb_checkin_is_accepted(server, org):
    hosts = [(f"esx{i}", [f"guest-{i}-{j}" for j in range(20)]) for i in range(50)]
    body = json.dumps(report(*hosts)).encode()
    body += b" " * (10 * MB - len(body))  # virt-who pretty-prints; size is what matters here
    assert len(body) == 10 * MB
    status, _, answer = request(server, "POST", "/candlepin/hypervisors/ACME?reporter_id=big",
                                body, {**REPORTER, "Content-Type": "application/json"})
    assert status == 200, answer
    job = json.loads(answer)
    assert job["state"] in ("CREATED", "FINISHED")
    report_row = Report.objects.get(uuid=job["id"])
    assert report_row.payload_size == 10 * MB and report_row.state == Report.State.FINISHED
    assert System.objects.filter(org=org, hypervisor_id__isnull=False).count() == 50

