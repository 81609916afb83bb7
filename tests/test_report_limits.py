"""Waiting-report limits per org and per reporter, never global (performance.md R9, issue 8
item 5), through real HTTP: one org flooding check-ins does not stop another org's, and legacy
synchronous check-ins answer 429 instead of waiting behind the org's lock."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings as django_settings
from django.db import connections

from hypervisors.models import GuestId, Report
from orgs import services as orgs
from orgs.models import Organization
from orgs.services import create_org
from sam import locks
from tests import workers

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
PASSWORD = "reporter-pass-1"


def _send(base: str, path: str, body: dict, user: str) -> tuple[int, dict, dict]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Basic {token}",
                                                             "Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def _checkin(base, owner: str, reporter: str, user: str, n: int = 0):
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": f"{reporter}-hv"},
                             "guestIds": [f"g{n}"]}]}
    return _send(base, f"/candlepin/hypervisors/{owner}?reporter_id={reporter}", body, user)


def _legacy(base, owner: str, user: str):
    return _send(base, f"/candlepin/hypervisors?owner={owner}", {f"{owner}-legacy": ["lg1"]},
                 user)


@pytest.fixture
def base(transactional_db, live_server):
    """Two orgs, each with its own reporter; tasks go to the broker and no worker runs, so
    accepted reports stay waiting."""
    workers.require_services()
    workers.flush_broker()
    for key, user in (("FLOOD", "flooder"), ("ACME", "virtwho")):
        orgs.set_member_role(create_org(key, key), user, "reporter", password=PASSWORD)
    try:
        with workers.tasks_to_broker():
            yield live_server.url
    finally:
        workers.flush_broker()


def test_a_flooding_org_does_not_block_another_orgs_checkins(base, settings):
    settings.SAM_REPORT_ORG_QUEUE_LIMIT = org_limit = 60  # the live server runs in this process
    statuses: list[int] = []
    for i in range(4 * org_limit):  # hundreds of reports, 150 free-text reporter ids
        status, headers, answer = _checkin(base, "FLOOD", f"flood-{i % 150}", "flooder", i)
        statuses.append(status)
        if status == 429:
            assert headers["Retry-After"] == str(settings.SAM_REPORT_RETRY_AFTER)
            assert "retry in" in answer["displayMessage"]
    assert statuses[:org_limit] == [200] * org_limit
    assert set(statuses[org_limit:]) == {429}
    assert Report.objects.filter(org__key="FLOOD", state="CREATED").count() == org_limit

    # The other org checks in as usual, asynchronously and with the legacy call.
    status, _, job = _checkin(base, "ACME", "esx-vcenter1", "virtwho")
    assert status == 200 and job["state"] == "CREATED"
    status, _, result = _legacy(base, "ACME", "virtwho")
    assert status == 200 and [h["name"] for h in result["created"]] == ["ACME-legacy"]
    # The flooding org's legacy check-in counts against its limit too.
    status, headers, _ = _legacy(base, "FLOOD", "flooder")
    assert status == 429 and headers["Retry-After"].isdigit()
    assert not GuestId.objects.filter(host__hypervisor_id="flood-legacy").exists()


def test_one_reporter_is_limited_before_its_org(base):
    limit = django_settings.SAM_REPORT_REPORTER_QUEUE_LIMIT
    statuses = [_checkin(base, "ACME", "chatty", "virtwho", i)[0] for i in range(limit + 3)]
    assert statuses == [200] * limit + [429] * 3
    # Another reporter of the same org is still accepted.
    assert _checkin(base, "ACME", "quiet", "virtwho")[0] == 200


def test_legacy_checkin_answers_429_instead_of_waiting_for_the_org_lock(base):
    acme = Organization.objects.get(key="ACME")
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:  # a report of ACME is being applied
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [locks.ORG_REPORT, acme.id])
        started = time.monotonic()
        status, headers, answer = _legacy(base, "ACME", "virtwho")
        assert status == 429 and time.monotonic() - started < 5
        assert headers["Retry-After"] == str(django_settings.SAM_REPORT_RETRY_AFTER)
        assert "being applied" in answer["displayMessage"]
        assert _legacy(base, "FLOOD", "flooder")[0] == 200  # another org is not held up
    finally:
        other.close()  # ends the session: the lock is released
    status, _, result = _legacy(base, "ACME", "virtwho")
    assert status == 200 and result["created"]
    assert not Report.objects.filter(state="CREATED", kind="legacy").exists()
