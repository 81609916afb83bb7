"""The org dashboard: coverage at a glance, pool use, reporter health, recent reports,
expiring subscriptions with their impact, and the coverage-over-time chart.

Every section is one or two aggregate queries whatever the size of the org (performance.md
P8); the counts that would scan whole tables come from ``subscriptions.coverage`` and are
cached. The chart is drawn here as inline SVG: its points are computed in Python (testable),
no JavaScript library and no external request.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.core.cache import cache
from django.db.models import Case, Count, F, FloatField, Max, Q, Value, When, Window
from django.db.models.functions import Cast, Coalesce, RowNumber
from django.utils import timezone
from django.views.generic import TemplateView

from hypervisors.models import GuestId, Report
from orgs import content_access
from orgs.models import ApiToken, Organization, System
from sam.ui import OrgPageMixin
from subscriptions import coverage
from subscriptions.manifest.status import manifest_status
from subscriptions.models import UNLIMITED, CoverageSnapshot, Entitlement, Pool, Subscription

EXPIRING_DAYS = 90
CHART_DAYS = 90
TOP_POOLS = 8
RECENT_REPORTS = 10
REPORTER_HISTORY = 11  # reports per reporter read for its usual interval (10 gaps)
SILENT_FACTOR = 2  # silent for longer than this × the usual interval: warn
DROP_MIN = 5  # a report that drops at least this many guests ...
DROP_SHARE = 0.25  # ... and at least this share of the guests it had: warn
TOKEN_WARN_DAYS = 30  # warn this long before a reporter's token expires


# --- Pools -------------------------------------------------------------------------------------

def pool_utilisation(org: Organization, now: datetime, limit: int | None = TOP_POOLS) -> list[Pool]:
    """The org's shared (not host-derived) current pools, fullest first; unlimited ones last
    (``limit=None``: all of them)."""
    share = Case(When(quantity=UNLIMITED, then=Value(-1.0)), When(quantity=0, then=Value(0.0)),
                 default=Cast(F("consumed"), FloatField()) / Cast(F("quantity"), FloatField()),
                 output_field=FloatField())
    pools = (Pool.objects.filter(org=org, requires_host__isnull=True, start__lte=now, end__gt=now)
             .select_related("product", "subscription").annotate(share=share)
             .order_by("-share", "-consumed", "product__sku", "id"))
    pools = list(pools if limit is None else pools[:limit])
    for pool in pools:
        pool.percent = None if pool.unlimited else round(100 * pool.share)
    return pools


# --- Reporter health ---------------------------------------------------------------------------

@dataclass
class Reporter:
    reporter_id: str
    last_checkin: datetime | None = None  # the last check-in report
    last_checkin_uuid: str | None = None
    last_heartbeat: datetime | None = None
    hypervisors: int = 0
    guests: int = 0
    hypervisor_last_seen: datetime | None = None
    usual_interval: timedelta | None = None
    warnings: list[str] = field(default_factory=list)
    reported: bool = False  # a report of it is stored (else its hypervisors came another way)
    token_name: str = ""  # its reporter token (the setup page links them), the longest-lived
    token_expires: datetime | None = None  # None: never, or no token known (token_name "")

    @property
    def usual(self) -> str:
        return _span(self.usual_interval) if self.usual_interval else ""

    @property
    def last_seen(self) -> datetime | None:
        times = [t for t in (self.last_checkin, self.last_heartbeat) if t is not None]
        return max(times) if times else None


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} h"
    return f"{max(1, seconds // 60)} min"


def reporter_health(org: Organization, now: datetime) -> list[Reporter]:
    """Every reporter of the org (from its reports and its hypervisors) with warnings.

    Three queries: the last ``REPORTER_HISTORY`` reports of each reporter (a window function),
    hypervisors per reporter, reported guests per reporter.
    """
    # Newest activity first: identical re-reports and heartbeats update a row (retention).
    active = Coalesce("last_seen", "created")
    rows = list(
        Report.objects.filter(org=org, kind__in=[Report.Kind.CHECKIN, Report.Kind.HEARTBEAT])
        .annotate(active=active,
                  rank=Window(RowNumber(), partition_by=[F("reporter_id")],
                              order_by=[active.desc(), F("id").desc()]))
        .filter(rank__lte=REPORTER_HISTORY)
        .values("uuid", "reporter_id", "kind", "created", "finished", "guest_count",
                "diff__counts", "same_as_id", "repeats", "last_seen", "last_heartbeat")
        .order_by("reporter_id", "-active", "-id")
    )
    reporters: dict[str, Reporter] = {}
    history: dict[str, list[dict]] = {}
    for row in rows:
        history.setdefault(row["reporter_id"], []).append(row)
    for row in (System.objects.filter(org=org).hypervisors()
                .values("reporter_id").annotate(n=Count("pk"), seen=Max("last_checkin"))
                .order_by()):
        rep = reporters.setdefault(row["reporter_id"] or "", Reporter(row["reporter_id"] or ""))
        rep.hypervisors += row["n"]
        seen = row["seen"]
        if seen and (rep.hypervisor_last_seen is None or seen > rep.hypervisor_last_seen):
            rep.hypervisor_last_seen = seen
    for row in (GuestId.objects.filter(org=org).values("host__reporter_id")
                .annotate(n=Count("pk")).order_by()):
        key = row["host__reporter_id"] or ""
        reporters.setdefault(key, Reporter(key)).guests += row["n"]
    for key, reports in history.items():
        rep = reporters.setdefault(key, Reporter(key))
        _judge(rep, reports, now)
        rep.reported = True
    _token_expiry(org, reporters, now)
    # A reporter that never reported and has nothing left is not worth a row.
    return sorted((r for r in reporters.values() if r.hypervisors or r.guests or r.last_seen),
                  key=lambda r: (not r.warnings, r.reporter_id))


def _token_expiry(org: Organization, reporters: dict[str, Reporter], now: datetime) -> None:
    """Each reporter's usable token that lives longest, and a warning ``TOKEN_WARN_DAYS`` before
    it expires (or once it has: the reporter's check-ins are then refused)."""
    tokens = (ApiToken.objects.filter(org=org, role="reporter", revoked__isnull=True)
              .exclude(reporter_id="").only("name", "expires", "reporter_id")
              .order_by("reporter_id", "id"))
    best: dict[str, ApiToken] = {}
    for token in tokens:
        if token.reporter_id not in reporters:
            continue
        held = best.get(token.reporter_id)
        if held is None or (held.expires is not None
                            and (token.expires is None or token.expires > held.expires)):
            best[token.reporter_id] = token
    for key, token in best.items():
        rep = reporters[key]
        rep.token_name, rep.token_expires = token.name, token.expires
        if token.expires is None:
            continue
        if token.expires <= now:
            rep.warnings.append(f"its token “{token.name}” expired on {token.expires:%Y-%m-%d}: "
                                "its reports are refused; make a new token on the setup page")
        elif token.expires - now <= timedelta(days=TOKEN_WARN_DAYS):
            days = max(1, (token.expires - now).days)
            rep.warnings.append(f"its token “{token.name}” expires in {_plural(days, 'day')} "
                                f"({token.expires:%Y-%m-%d}): make a new one on the setup page")


def _times(row: dict) -> list[datetime]:
    """When a report row was sent, and when the identical reports and heartbeats it stands for
    were (spread evenly: only their count and the last one are kept)."""
    first, last, repeats = row["created"], row["last_seen"], min(row["repeats"] or 0,
                                                                 REPORTER_HISTORY)
    if not repeats or last is None or last <= first:
        return [first]
    return [first + (last - first) * i / repeats for i in range(repeats + 1)]


def _judge(rep: Reporter, reports: list[dict], now: datetime) -> None:
    """Fill ``rep`` from its newest-first reports and add the silence / dropped-guests warnings."""
    for row in reports:
        if row["kind"] == Report.Kind.CHECKIN and rep.last_checkin is None:
            # A row answering identical reports was last sent when it last finished.
            sent = row["finished"] if row["same_as_id"] and row["finished"] else row["created"]
            rep.last_checkin, rep.last_checkin_uuid = sent, str(row["uuid"])
        beat = row["last_heartbeat"] or (row["created"] if row["kind"] == Report.Kind.HEARTBEAT
                                         else None)
        if beat is not None and (rep.last_heartbeat is None or beat > rep.last_heartbeat):
            rep.last_heartbeat = beat
    times = sorted({t for row in reports for t in _times(row)}, reverse=True)
    gaps = [newer - older for newer, older in zip(times, times[1:], strict=False) if newer > older]
    if gaps:
        rep.usual_interval = statistics.median(gaps)
        silent = now - times[0]
        if silent > SILENT_FACTOR * rep.usual_interval:
            rep.warnings.append(f"silent for {_span(silent)}; it usually reports every "
                                f"{_span(rep.usual_interval)}")
    applied = next((row for row in reports if row["kind"] == Report.Kind.CHECKIN
                    and isinstance(row["diff__counts"], dict)), None)
    if applied is not None:
        counts = applied["diff__counts"]
        removed = int(counts.get("guests_removed") or 0)
        added = int(counts.get("guests_added") or 0)
        before = max(1, (applied["guest_count"] or 0) - added + removed)
        if removed >= DROP_MIN and removed >= DROP_SHARE * before:
            rep.warnings.append(f"its last report dropped {removed} of {before} guests")


# --- Expiring subscriptions --------------------------------------------------------------------

def _days_left(end: datetime, now: datetime) -> int:
    return max(0, (end - now).days)


def expiring(org: Organization, now: datetime, days: int = EXPIRING_DAYS) -> list[Subscription]:
    """Subscriptions ending within ``days`` with who loses coverage: the guests and the hosts
    holding entitlements from any of their pools (derived pools included). Two queries."""
    subs = list(Subscription.objects.filter(org=org, end__gt=now, end__lte=now + timedelta(days=days))
                .select_related("product").order_by("end", "id")[:20])
    impact = {
        row["pool__subscription_id"]: row
        for row in Entitlement.objects.filter(pool__subscription__in=subs)
        .values("pool__subscription_id")
        .annotate(guests=Count("system", distinct=True, filter=Q(system__is_guest=True)),
                  hosts=Count("system", distinct=True, filter=Q(system__is_guest=False)))
        .order_by()
    } if subs else {}
    for sub in subs:
        row = impact.get(sub.pk, {})
        sub.days_left = _days_left(sub.end, now)
        sub.guests_losing = row.get("guests", 0)
        sub.hosts_losing = row.get("hosts", 0)
        sub.impact = impact_text(sub.days_left, sub.guests_losing, sub.hosts_losing)
    return subs


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def impact_text(days_left: int, guests: int, hosts: int) -> str:
    """E.g. "ends in 12 days — 212 guests on 9 hosts lose coverage"."""
    when = "ends today" if days_left == 0 else f"ends in {_plural(days_left, 'day')}"
    if guests and hosts:
        who = f"{_plural(guests, 'guest')} on {_plural(hosts, 'host')}"
    elif guests:
        who = _plural(guests, "guest")
    elif hosts:
        who = _plural(hosts, "system")
    else:
        return f"{when} — nothing consumes it"
    verb = "loses" if guests + hosts == 1 else "lose"
    return f"{when} — {who} {verb} coverage"


# --- Chart -------------------------------------------------------------------------------------

@dataclass
class Series:
    """One line of the chart. Besides its colour it has its own dash pattern and marker shape,
    so the lines can be told apart without colour (WCAG 1.4.1)."""

    name: str
    css: str
    points: list[tuple[float, float]]
    colour: str = "#1b1f24"
    dash: str = ""  # stroke-dasharray; "" = solid
    marker: str = "circle"  # circle, square or triangle

    @property
    def points_attr(self) -> str:
        return " ".join(f"{x:g},{y:g}" for x, y in self.points)

    def marker_path(self, x: float, y: float, r: float = 3.5) -> str:
        """SVG path data of the marker centred on (x, y)."""
        if self.marker == "square":
            return f"M{x - r:g},{y - r:g}h{2 * r:g}v{2 * r:g}h{-2 * r:g}z"
        if self.marker == "triangle":
            return f"M{x:g},{y - r - 0.5:g}l{r + 0.5:g},{2 * r:g}h{-2 * r - 1:g}z"
        return f"M{x - r:g},{y:g}a{r:g},{r:g} 0 1,0 {2 * r:g},0a{r:g},{r:g} 0 1,0 {-2 * r:g},0z"

    @property
    def legend_marker(self) -> str:
        return self.marker_path(17, 6, 3.5)

    @property
    def marker_paths(self) -> list[str]:
        return [self.marker_path(x, y) for x, y in self.points]


@dataclass
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    start: date
    end: date
    y_max: int
    series: list[Series]
    empty: bool
    rows: list[tuple[date, int, int, int]] = field(default_factory=list)  # the data table

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def right(self) -> int:
        return self.left + self.plot_width

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


# name, css class, snapshot field, colour, dash pattern, marker
CHART_SERIES = (("Covered", "valid", "guests_covered", "#116329", "", "circle"),
                ("Temporary", "partial", "guests_temporary", "#8a5a00", "8 4", "square"),
                ("Not covered", "invalid", "guests_uncovered", "#a40e26", "2 3", "triangle"))


def chart(snapshots: list[CoverageSnapshot], today: date, days: int = CHART_DAYS,
          width: int = 720, height: int = 220) -> Chart:
    """Polylines of the guest counts over the last ``days`` days (x: day, y: guests).

    x = left + (day - start) / (days - 1) × plot width; y = top + plot height × (1 - n / y_max)
    with y_max the largest guest total of the snapshots (at least 1), rounded to 0.1.
    """
    left, top, right_pad, bottom_pad = 48, 12, 12, 28
    plot_w, plot_h = width - left - right_pad, height - top - bottom_pad
    start = today - timedelta(days=days - 1)
    shown = sorted((s for s in snapshots if start <= s.day <= today), key=lambda s: s.day)
    y_max = max([s.guests_covered + s.guests_temporary + s.guests_uncovered for s in shown] + [1])
    series = []
    for name, css, attr, colour, dash, marker in CHART_SERIES:
        points = []
        for snap in shown:
            x = left + (snap.day - start).days * plot_w / (days - 1)
            y = top + plot_h * (1 - getattr(snap, attr) / y_max)
            points.append((round(x, 1), round(y, 1)))
        series.append(Series(name, css, points, colour, dash, marker))
    rows = [(s.day, s.guests_covered, s.guests_temporary, s.guests_uncovered) for s in shown]
    return Chart(width, height, left, top, plot_w, plot_h, start, today, y_max, series,
                 empty=not shown, rows=rows)


# --- The page ----------------------------------------------------------------------------------

def _cached(key: str, compute, version: tuple):
    """``compute()`` cached for ``coverage.CACHE_SECONDS`` unless the data changed meanwhile."""
    hit = cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = compute()
    cache.set(key, (version, value), coverage.CACHE_SECONDS)
    return value


class DashboardView(OrgPageMixin, TemplateView):
    template_name = "sam/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        org, now = self.org, timezone.now()
        today = timezone.localdate()
        snapshots = list(CoverageSnapshot.objects.filter(
            org=org, day__gt=today - timedelta(days=CHART_DAYS), day__lte=today).order_by("day"))
        version = coverage.data_version(Report)
        all_pools = self.request.GET.get("pools") == "all"
        pools = pool_utilisation(org, now, limit=None if all_pools else TOP_POOLS + 1)
        context.update(
            counts=coverage.cached(org, version),
            pools=pools if all_pools else pools[:TOP_POOLS],
            pools_more=not all_pools and len(pools) > TOP_POOLS,
            pools_all=all_pools,
            reporters=_cached(f"sam:reporters:{org.pk}", lambda: reporter_health(org, now), version),
            reports=list(Report.objects.filter(org=org).order_by("-created", "-id")
                         .only("uuid", "kind", "reporter_id", "state", "created", "hypervisor_count",
                               "guest_count")[:RECENT_REPORTS]),
            expiring=expiring(org, now),
            manifest=manifest_status(org, now, limit=10),
            chart=chart(snapshots, today),
            shown_sca=content_access.shown_sca(org),
            now=now,
        )
        return context
