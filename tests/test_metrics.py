"""GET /metrics (issue 12 item 5): counters from the web and worker processes summed at a scrape,
gauges read at scrape time, and the endpoint closed unless a token or an address list opens it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from hypervisors.models import Report
from orgs import services as orgs
from sam import metrics
from tests import workers
from tests.scenario import acme

TOKEN = "metrics-token-0123456789abcdef"
PASSWORD = "reporter-pass-1"


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_metrics_are_off_by_default(client):
    assert not settings.SAM_METRICS_TOKEN and not settings.SAM_METRICS_ALLOW_IPS
    assert client.get("/metrics").status_code == 404


@pytest.mark.django_db
def test_token_and_address_list(client, settings):
    settings.SAM_METRICS_TOKEN = TOKEN
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    ok = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain")
    assert "sam_reports_applied_total" in ok.content.decode()

    settings.SAM_METRICS_ALLOW_IPS = metrics_networks("10.0.0.0/8")
    # The test client's peer is 127.0.0.1: not listed, refused even with the token.
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
                      REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 401

    settings.SAM_METRICS_TOKEN = None  # an address list alone
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics").status_code == 403
    assert client.post("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 405


def metrics_networks(*items: str):
    import ipaddress

    return tuple(ipaddress.ip_network(item) for item in items)


@pytest.mark.django_db
def test_resolution_counters(client, settings):
    """``metrics.resolution_batch`` (called by the resolution task) counts batches and systems:
    ``rate(sam_systems_resolved_total[1m])`` is systems resolved per second."""
    settings.SAM_METRICS_TOKEN = TOKEN
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    before = _values(client.get("/metrics", **auth).content.decode())
    metrics.resolution_batch(7)
    metrics.registered("password")
    after = _values(client.get("/metrics", **auth).content.decode())
    # >=: other test processes of this run may count into the same directory meanwhile.
    assert (_value(after, "sam_resolution_batches_total")
            - _value(before, "sam_resolution_batches_total")) >= 1
    assert (_value(after, "sam_systems_resolved_total")
            - _value(before, "sam_systems_resolved_total")) >= 7
    assert (_value(after, "sam_registrations_total", via="password")
            - _value(before, "sam_registrations_total", via="password")) >= 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_counters_and_gauges_through_a_web_server_and_a_worker(tmp_path):
    """A report posted over HTTP is counted by the web process, waits in the reports queue (a
    gauge), is applied by a real worker process (counters and the duration histogram), and one
    scrape of the web server shows the sum of both processes."""
    workers.require_services()
    workers.flush_broker()
    org = acme()
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    env = {"SAM_METRICS_DIR": tmp_path / "metrics", "SAM_METRICS_TOKEN": TOKEN}
    port = workers.free_port()
    base = f"http://127.0.0.1:{port}"
    web = workers.start_web(port, **env)
    worker = None
    try:
        assert _get(base, None)[0] == 401
        assert _get(base, "wrong-token-0123456789abcdef")[0] == 401
        status, text = _get(base, TOKEN)
        assert status == 200
        start = _values(text)
        assert _value(start, "sam_reports_accepted_total") == 0

        body = json.dumps({"hypervisors": [{"hypervisorId": {"hypervisorId": "esx1"},
                                            "name": "esx1", "guestIds": [{"guestId": "g1"}]}]})
        job = _post(base, body)
        assert job["state"] == "CREATED"  # no worker yet: it waits in the reports queue
        waiting = _values(_get(base, TOKEN)[1])
        assert _value(waiting, "sam_reports_accepted_total") == 1
        assert _value(waiting, "sam_queue_length", queue=settings.SAM_REPORT_QUEUE) == 1
        assert _value(waiting, "sam_reports_waiting", org="ACME") == 1

        worker = workers.start_worker(concurrency=1, **env)
        workers.wait_until(lambda: Report.objects.get(uuid=job["id"]).state == "FINISHED",
                           "the worker applied the report")
        workers.wait_idle()
        done = _values(_get(base, TOKEN)[1])
        assert _value(done, "sam_reports_accepted_total") == 1
        assert _value(done, "sam_reports_applied_total") == 1
        assert _value(done, "sam_report_apply_seconds_count") == 1
        assert _value(done, "sam_report_apply_seconds_sum") > 0
        assert _value(done, "sam_reports_failed_total") == 0
        assert _value(done, "sam_queue_length", queue=settings.SAM_REPORT_QUEUE) == 0
        assert _value(done, "sam_reports_waiting", org="ACME") == 0
    finally:
        if worker is not None:
            worker.kill()
        web.kill()
    if worker is not None:
        workers.assert_clean(worker)
    # Each process counted into its own file; a restarted service forgets the dead ones.
    assert len(list((tmp_path / "metrics").glob("*/counter_*.db"))) >= 2


def _get(base: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{base}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post(base: str, body: str) -> dict:
    import base64

    auth = base64.b64encode(f"virtwho:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/candlepin/hypervisors/ACME?reporter_id=r1", data=body.encode(), method="POST",
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
