"""The dashboard: coverage counts (set-based, cached, constant queries), pool utilisation,
reporter health, recent reports, expiring subscriptions with their impact, and the chart drawn
from daily coverage snapshots."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import dateformat, timezone

from hypervisors.models import Report
from sam import dashboard
from subscriptions import coverage
from subscriptions import services as subs
from subscriptions.models import CoverageSnapshot, Subscription
from subscriptions.tasks import record_coverage_snapshots
from tests import scenario
from tests.test_ui_orgs import make_ui_actors

# A hypervisor report stages rows in temporary tables dropped at commit: real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


def build_world(org, extra_guests: int = 0):
    """esx01 (VDC) with guests g1, g2 (+ extra) covered; g3 new and unreported (temporary);
    g4 unreported for 3 days (not covered); kvm01 reported with no guest (no subscription)."""
    now = timezone.now()
    vdc = subs.create_subscription(org, "VDC", 1, start=now - timedelta(days=1),
                                   end=now + timedelta(days=365), contract_number="C-VDC")
    extra = [f"x{i:03}" for i in range(extra_guests)]
    scenario.report(org, "esx01", ["g1", "g2", *extra])
    scenario.report(org, "kvm01", [])
    for name in ["g1", "g2", *extra]:
        scenario.guest(org, name)
    scenario.guest(org, "g3")
    scenario.guest(org, "g4", registered_at=now - timedelta(days=3))
    return vdc


@pytest.fixture
def world(transactional_db):
    org = scenario.acme()
    actors = make_ui_actors(org)
    build_world(org)
    return actors


def dash(org) -> str:
    return reverse("sam:dashboard", kwargs={"org_key": org.key})


def test_access_by_actor(world):
    target = dash(world.org)
    assert world.clients["admin"].get(target).status_code == 200
    assert world.clients["viewer"].get(target).status_code == 200
    assert world.clients["other_admin"].get(target).status_code == 404
    anonymous = world.clients["anonymous"].get(target)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    assert world.clients["viewer"].post(target).status_code == 403


def test_coverage_counts(world):
    counts = coverage.compute(world.org)
    assert counts == coverage.Coverage(guests_covered=2, guests_temporary=1, guests_uncovered=1,
                                       hypervisors_with=1, hypervisors_without=1)
    # another org's systems are not counted
    assert coverage.compute(world.other) == coverage.Coverage()


def test_counts_link_to_filtered_lists(world):
    page = world.clients["viewer"].get(dash(world.org)).content.decode()
    systems = reverse("hypervisors:system_list", kwargs={"org_key": "ACME"})
    hypervisors = reverse("hypervisors:hypervisor_list", kwargs={"org_key": "ACME"})
    for param, count in (("covered", 2), ("temporary", 1), ("uncovered", 1)):
        assert re.search(rf'href="{systems}\?type=guest&amp;coverage={param}"[^>]*>{count}</a>', page), param
    assert re.search(rf'href="{hypervisors}\?subscribed=yes"[^>]*>1</a>', page)
    assert re.search(rf'href="{hypervisors}\?subscribed=no"[^>]*>1</a>', page)


def test_counts_are_cached_and_refreshed_on_change(world, django_assert_num_queries):
    first = coverage.cached(world.org)
    with django_assert_num_queries(1):  # only the change marker
        assert coverage.cached(world.org) == first
    scenario.guest(world.org, "g5")  # a new system: the cached counts are stale
    assert coverage.cached(world.org).guests == first.guests + 1


def _queries(client, org, django_assert_max_num_queries, budget: int) -> int:
    client.get(dash(org))  # warm-up: per-process caches (content types) are not the page's
    cache.clear()
    with django_assert_max_num_queries(budget) as captured:
        assert client.get(dash(org)).status_code == 200
    return len(captured.captured_queries)


def test_dashboard_query_count_does_not_grow( django_assert_max_num_queries):
    small = scenario.acme()
    actors = make_ui_actors(small)
    build_world(small)
    few = _queries(actors.clients["admin"], small, django_assert_max_num_queries, 30)

    from orgs.services import create_org, set_member_role
    big = create_org("BIG", "Big")
    for sku, name, extra in (("479", "RHEL", {}),):
        subs.create_product(big, sku, name, **extra)
    subs.create_product(big, "RHEL-G", "guest", provided=["479"])
    subs.create_product(big, "VDC", "VDC", attributes={"virt_limit": "unlimited"}, derived="RHEL-G")
    build_world(big, extra_guests=25)
    now = timezone.now()
    for i in range(5):
        Report.objects.create(org=big, reporter_id=f"vw{i % 2}", state="FINISHED", finished=now,
                              diff={"counts": {"guests_removed": 0, "guests_added": 1}})
    set_member_role(big, "org-admin", "admin")
    many = _queries(actors.clients["admin"], big, django_assert_max_num_queries, 30)
    assert many == few
    # and served from the cache the second time: fewer queries
    with django_assert_max_num_queries(few - 1):
        actors.clients["admin"].get(dash(big))


def test_expiring_subscription_impact(world):
    vdc = Subscription.objects.get(org=world.org, product__sku="VDC")
    subs.update_subscription(world.org, vdc.uuid, end=timezone.now() + timedelta(days=12, hours=1))
    page = world.clients["viewer"].get(dash(world.org)).content.decode()
    # g1, g2 on esx01's derived pool, g3 on the temporary (unmapped) pool; esx01 itself
    assert "ends in 12 days — 3 guests on 1 host lose coverage" in page
    assert "C-VDC" in page


def test_impact_text():
    assert dashboard.impact_text(12, 212, 9) == "ends in 12 days — 212 guests on 9 hosts lose coverage"
    assert dashboard.impact_text(1, 1, 0) == "ends in 1 day — 1 guest loses coverage"
    assert dashboard.impact_text(0, 0, 2) == "ends today — 2 systems lose coverage"
    assert dashboard.impact_text(30, 0, 0) == "ends in 30 days — nothing consumes it"


def test_nothing_expiring_and_empty_states():
    org = scenario.acme()
    actors = make_ui_actors(org)
    page = actors.clients["admin"].get(dash(org)).content.decode()
    assert "No subscription ends within 90 days." in page
    assert "No guests or hypervisors yet" in page
    assert "No current pools" in page
    assert "No virt-who reporter has reported yet" in page
    assert "No report received yet." in page
    assert "No daily snapshot yet" in page
    assert "<svg" not in page


def test_pool_utilisation(world):
    page = world.clients["viewer"].get(dash(world.org)).content.decode()
    table = page[page.index('id="pools"'):page.index("</table>", page.index('id="pools"'))]
    table = table[table.index("<tbody>"):]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    # VDC's NORMAL pool is full (1/1) and comes first; its UNMAPPED_GUEST pool is unlimited
    assert "VDC" in rows[0] and "NORMAL" in rows[0] and "100%" in rows[0]
    assert "UNMAPPED_GUEST" in rows[-1] and "unlimited" in rows[-1]
    assert "ENTITLEMENT_DERIVED" not in table  # per-host pools are not listed


def _report(org, reporter, hours_ago, kind="checkin", **fields):
    report = Report.objects.create(org=org, reporter_id=reporter, kind=kind, state="FINISHED",
                                   **fields)
    created = timezone.now() - timedelta(hours=hours_ago)
    Report.objects.filter(pk=report.pk).update(created=created, finished=created)
    return report


def test_reporter_health_and_recent_reports(world):
    org = world.org
    for hours in (10, 8, 6):  # every 2 h, silent for 6 h
        _report(org, "vw-silent", hours, diff={"counts": {"guests_removed": 0, "guests_added": 0}})
    _report(org, "vw-drop", 3, guest_count=30, diff={"counts": {"guests_removed": 0}})
    _report(org, "vw-drop", 2, kind="heartbeat")
    last = _report(org, "vw-drop", 1, guest_count=20,
                   diff={"counts": {"guests_removed": 10, "guests_added": 0}})
    _report(org, "vw-ok", 1.5)
    _report(org, "vw-ok", 0.5, kind="heartbeat")
    reporters = {r.reporter_id: r for r in dashboard.reporter_health(org, timezone.now())}
    assert reporters["vw-silent"].warnings == ["silent for 6 h; it usually reports every 2 h"]
    assert reporters["vw-drop"].warnings == ["its last report dropped 10 of 30 guests"]
    assert reporters["vw-drop"].last_checkin_uuid == str(last.uuid)
    assert reporters["vw-drop"].last_heartbeat is not None
    assert reporters["vw-ok"].warnings == []
    # esx01 and kvm01 were reported without a reporter id: 2 hypervisors, 2 guests
    assert (reporters[""].hypervisors, reporters[""].guests) == (2, 2)

    page = world.clients["viewer"].get(dash(org)).content.decode()
    assert "silent for 6 h" in page and "dropped 10 of 30 guests" in page
    detail = reverse("hypervisors:report_detail", kwargs={"org_key": "ACME", "uuid": last.uuid})
    recent = page[page.index('id="recent-reports"'):]
    assert f'href="{detail}"' in recent
    assert recent.count("<tr>") == 1 + 8  # header + the 8 reports


def test_reporter_history_from_other_org_is_not_shown(world):
    _report(world.other, "their-reporter", 1)
    page = world.clients["admin"].get(dash(world.org)).content.decode()
    assert "their-reporter" not in page


# --- snapshots and chart -----------------------------------------------------------------------

def test_snapshot_task_upserts_today(world):
    assert record_coverage_snapshots.delay().get() >= 2
    assert record_coverage_snapshots.delay().get() >= 2  # idempotent: same rows
    snap = CoverageSnapshot.objects.get(org=world.org)
    assert (snap.day, snap.guests_covered, snap.guests_temporary, snap.guests_uncovered,
            snap.hypervisors_with, snap.hypervisors_without) == (timezone.localdate(), 2, 1, 1, 1, 1)
    scenario.guest(world.org, "g9", registered_at=timezone.now() - timedelta(days=5))
    coverage.record_snapshot(world.org)
    assert CoverageSnapshot.objects.get(org=world.org).guests_uncovered == 2


def test_beat_runs_the_snapshot_task_daily():
    from sam.celery import app

    entries = [e for e in app.conf.beat_schedule.values()
               if e["task"] == "subscriptions.tasks.record_coverage_snapshots"]
    assert len(entries) == 1


def _read_chart(page: str):
    """The chart as a reader sees it: per line (in drawing order) its points turned back into
    (day, guests) with the geometry the SVG itself declares, the axis labels and the legend."""
    svg = re.search(r'<svg[^>]*id="coverage-chart".*?</svg>', page, re.S).group(0)
    geo = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', svg.split(">", 1)[0]))
    left, top = float(geo["left"]), float(geo["top"])
    width, height = float(geo["plot-width"]), float(geo["plot-height"])
    y_max, days = int(geo["y-max"]), int(geo["days"])
    start = date.fromisoformat(geo["start"])

    def data(point: str) -> tuple[date, int]:
        x, y = map(float, point.split(","))
        offset = (x - left) * (days - 1) / width
        value = y_max * (1 - (y - top) / height)
        assert abs(offset - round(offset)) < 0.01 and abs(value - round(value)) < 0.01, point
        return start + timedelta(days=round(offset)), round(value)

    lines = [(name, [data(p) for p in points.split()])
             for name, points in re.findall(r'<polyline[^>]*data-series="(\w+)"[^>]*points="([^"]*)"', svg)]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    legend = re.findall(r'<li class="(\w+)"><svg.*?</svg> ([^<]*)</li>', page)
    return lines, y_max, start, labels, legend


def test_chart_draws_three_days(world):
    """Three days of one org: each line says that day's count, in day order; the vertical scale
    ends at the day with the most guests; the labels name the scale, the period and the lines."""
    today = timezone.localdate()
    counts = {2: (2, 1, 1), 1: (3, 0, 1), 0: (4, 0, 0)}  # days ago: covered, temporary, not covered
    for days_ago, (covered, temporary, uncovered) in counts.items():
        CoverageSnapshot.objects.create(org=world.org, day=today - timedelta(days=days_ago),
                                        guests_covered=covered, guests_temporary=temporary,
                                        guests_uncovered=uncovered)
    CoverageSnapshot.objects.create(org=world.org, day=today - timedelta(days=120), guests_covered=50)
    CoverageSnapshot.objects.create(org=world.other, day=today, guests_covered=99)
    page = world.clients["viewer"].get(dash(world.org)).content.decode()
    lines, y_max, start, labels, legend = _read_chart(page)

    assert [name for name, _ in lines] == ["valid", "partial", "invalid"]
    days = [today - timedelta(days=d) for d in sorted(counts, reverse=True)]
    for position, (name, points) in enumerate(lines):
        assert points == [(day, counts[(today - day).days][position]) for day in days], name
    # Scale: the busiest shown day (4 guests), not the 50 from 120 days ago nor the other org's 99.
    assert y_max == 4
    assert start == today - timedelta(days=dashboard.CHART_DAYS - 1)
    assert labels == [str(y_max), "0", dateformat.format(start, "M j"), dateformat.format(today, "M j")]
    assert legend == [("valid", "Covered"), ("partial", "Temporary"), ("invalid", "Not covered")]


def test_chart_function_scales_to_largest_total():
    """The top of the plot is the largest day total; the first day of the period is its left
    edge and today its right edge; a higher count is drawn higher."""
    today = timezone.localdate()
    snaps = [CoverageSnapshot(day=today - timedelta(days=89), guests_covered=10),
             CoverageSnapshot(day=today, guests_covered=5, guests_uncovered=5)]
    drawn = dashboard.chart(snaps, today)
    assert drawn.y_max == 10
    covered, temporary, uncovered = drawn.series
    assert [s.name for s in drawn.series] == ["Covered", "Temporary", "Not covered"]
    middle = drawn.top + drawn.plot_height / 2
    assert covered.points == [(drawn.left, drawn.top), (drawn.right, middle)]  # 10 → 5 of 10
    assert uncovered.points == [(drawn.left, drawn.bottom), (drawn.right, middle)]  # 0 → 5
    assert temporary.points == [(drawn.left, drawn.bottom), (drawn.right, drawn.bottom)]
    assert drawn.rows == [(today - timedelta(days=89), 10, 0, 0), (today, 5, 0, 5)]
