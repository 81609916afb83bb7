"""The apply of a report (issue 12 item 4, issue 15 items 3 and 6): a fixed number of
statements whatever its size, and the shortcuts of a first report into an org give the same
mapping, timeline and current hosts as the general path."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hypervisors import ingest
from hypervisors.models import GuestHostInterval, GuestId
from orgs.models import System
from orgs.services import create_org

pytestmark = pytest.mark.django_db


def _entries(hosts: dict[str, list[str]]) -> list[ingest.Entry]:
    return ingest.parse_entries({"hypervisors": [
        {"hypervisorId": {"hypervisorId": hv}, "name": hv,
         "guestIds": [{"guestId": g, "state": 1, "attributes": {"active": 1}} for g in guests]}
        for hv, guests in hosts.items()]})


def _report(size: int, tag: str, shift: int = 0) -> dict[str, list[str]]:
    """``size`` hosts with 3 guests each; ``shift`` moves every guest to the next host."""
    return {f"{tag}-hv{i}": [f"{tag}-g{(i - shift) % size}-{k}" for k in range(3)]
            for i in range(size)}


def _statements(org, hosts: dict[str, list[str]]) -> int:
    with CaptureQueriesContext(connection) as ctx:
        ingest.apply_entries(org, _entries(hosts), reporter_id="r", report_id=None)
    return len(ctx.captured_queries)


def test_statement_count_does_not_grow_with_the_report():
    counts = {}
    for size in (5, 60):
        org = create_org(f"budget-{size}", "Budget")
        first = _statements(org, _report(size, "b"))
        moved = _statements(org, _report(size, "b", shift=1))
        counts[size] = (first, moved)
    assert counts[5] == counts[60], counts
    first, moved = counts[5]
    # A first report skips what finds nothing in an empty org; a later one does it all.
    assert first < moved <= 40, counts


def _state(org) -> dict[str, object]:
    hv = dict(System.objects.filter(org=org, hypervisor_id__isnull=False)
              .values_list("id", "hypervisor_id"))
    return {
        "rows": sorted((hv[h], g) for h, g in GuestId.objects.filter(org=org)
                       .values_list("host_id", "guest_uuid")),
        "open": sorted((g, hv.get(h)) for g, h in GuestHostInterval.objects.filter(
            org=org, ended__isnull=True).values_list("guest_uuid", "host_id")),
        "closed": GuestHostInterval.objects.filter(org=org, ended__isnull=False).count(),
        "current_host": sorted((s.name, hv.get(s.current_host_id))
                               for s in System.objects.filter(org=org, is_guest=True)),
    }


def _register_guests(org, uuids: list[str]) -> None:
    from hypervisors.services import register_system

    for uuid in uuids:
        register_system(org, f"vm-{uuid}", facts={"virt.is_guest": "true", "virt.uuid": uuid},
                        installed_products=[])


def test_first_report_shortcuts_match_the_general_path():
    """The same report into an empty org (shortcuts) and into an org that already had guest
    rows and stays elsewhere (every query): the same rows, open stays and current hosts. A
    guest listed by two hosts belongs to the later row either way."""
    hosts = {"hv-a": ["g1", "g2", "shared"], "hv-b": ["g3", "shared"], "hv-c": []}
    fresh, busy = create_org("fresh", "Fresh"), create_org("busy", "Busy")
    ingest.apply_entries(busy, _entries({"hv-old": ["other"]}))
    for org in (fresh, busy):
        _register_guests(org, ["g1", "shared"])
        applied = ingest.apply_entries(org, _entries(hosts), reporter_id="r")
        assert sorted(applied.added) == sorted((g, hv) for hv, gs in hosts.items() for g in gs)
    expected = _state(fresh)
    got = _state(busy)
    got["rows"] = [row for row in got["rows"] if row[0] != "hv-old"]
    got["open"] = [row for row in got["open"] if row[0] != "other"]
    assert got == expected
    assert ("shared", "hv-b") in expected["open"]  # hv-b's row was inserted last
    assert expected["current_host"] == [("vm-g1", "hv-a"), ("vm-shared", "hv-b")]

    # A later report moves g1: the old stay is closed, the move is in the diff, the registered
    # guest follows, and only it is re-resolved.
    applied = ingest.apply_entries(fresh, _entries({"hv-a": ["g2", "shared"],
                                                    "hv-b": ["g3", "shared"], "hv-c": ["g1"]}),
                                   reporter_id="r")
    assert applied.moved == [("g1", "hv-a", "hv-c")]
    after = _state(fresh)
    assert ("g1", "hv-c") in after["open"] and after["closed"] == 1
    assert ("vm-g1", "hv-c") in after["current_host"]
    assert applied.resolved == [System.objects.get(org=fresh, name="vm-g1").id]
