"""Accessibility of the web UI (issue 16), in the headless Chromium of the other browser tests.

- axe-core (npm: tests/a11y/package.json, installed by ``scripts/test`` with ``npm ci``) with the
  WCAG 2.0/2.1/2.2 A and AA rules on every org page (found from the URL patterns) and on each
  form shown with its errors: no violation.
- At 320 px no page's document is wider than the viewport (tables scroll in their region).
- Every kind of focusable element shows a focus ring of at least 3:1 against what is behind it.
- The org switcher: choosing with the keyboard alone does not navigate; submitting does, also
  without JavaScript.
- The coverage chart's data table holds the same points as the drawn lines.

One browser for the module; each test loads the demo data and starts its own web server.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import pytest
from django.utils import timezone

from hypervisors import reports
from orgs.models import Organization
from subscriptions.models import CoverageSnapshot
from tests.browser import chromium, org_urls, seed_demo
from tests.workers import ROOT, free_port, start_web

pytestmark = [pytest.mark.django_db(transaction=True)]

AXE = ROOT / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
# Findings that must not even be "incomplete" (axe could not decide): broken ARIA references.
NEVER = {"aria-valid-attr-value", "aria-prohibited-attr"}
RUN_AXE = """async (tags) => {
  const r = await axe.run(document, {runOnly: {type: "tag", values: tags}});
  const brief = (list) => list.map(v => ({id: v.id, help: v.help,
      nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ") + " :: " + n.failureSummary)}));
  return {violations: brief(r.violations), incomplete: brief(r.incomplete)};
}"""
WIDER = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
# Each form shown with its errors: (page, form, fields to empty first).
FORMS_WITH_ERRORS = [
    ("/o/ACME/settings/", "main form[method=post]", ["#id_name", "#id_unmapped_window_hours",
                                                      "#id_unmapped_lifetime_hours"]),
    ("/o/ACME/members/", "main form[novalidate]", []),
    ("/o/ACME/tokens/", "main form[novalidate]", []),
    ("/o/ACME/setup/", "#virt-who-form", ["#id_section", "#id_reporter_id", "#id_rhsm_hostname",
                                          "#id_rhsm_port", "#id_interval"]),
    ("/o/ACME/subscriptions/new/", "main form[method=post]", ["#id_quantity"]),
    ("/o/ACME/subscriptions/import/", "main form[enctype]", []),
    ("/o/ACME/subscriptions/manifest/", "main form[enctype]", []),
]


@pytest.fixture(scope="module")
def browser():
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: cd tests/a11y && npm ci (scripts/test does it)")
    with chromium() as launched:
        yield launched


@pytest.fixture
def site(browser):
    """The demo data, a web server on it, and a signed-in admin tab: (page, base URL)."""
    password = seed_demo()
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": "esx09"}, "name": "esx09.acme.example",
                             "guestIds": [{"guestId": "vm-9", "state": 1}], "facts": {}}]}
    reports.accept_checkin(Organization.objects.get(key="ACME"), json.dumps(body).encode(),
                           reporter_id="virt-who-lab")
    port = free_port()
    web = start_web(port)
    base = f"http://127.0.0.1:{port}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(path=str(AXE))
    page = context.new_page()
    try:
        page.goto(base + "/accounts/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        with page.expect_navigation():
            page.click("main form button[type=submit]")
        yield page, base
    finally:
        context.close()
        web.kill()
    assert "Traceback" not in web.output(), web.output()[-4000:]


FOCUS_RING = """(selector) => [...document.querySelectorAll(selector)]
    .filter(el => { el.focus(); return document.activeElement === el; }).slice(0, 3).map(el => {
  el.focus();
  const style = getComputedStyle(el);
  // The ring is drawn outside the element (outline-offset): what lies behind it is the first
  // ancestor with a background.
  let bg = "rgba(0, 0, 0, 0)", node = el.parentElement;
  while (node && /rgba\\(.*, 0\\)$|transparent/.test(bg)) {
    bg = getComputedStyle(node).backgroundColor; node = node.parentElement;
  }
  return {what: el.tagName + (el.id ? "#" + el.id : ""), ring: style.outlineColor,
          width: parseFloat(style.outlineWidth), style: style.outlineStyle, behind: bg};
})"""
FOCUSABLE = ["header a", "header select", "header button", "main a", "main button", "main input",
             "main select", "main [tabindex='0']", ".messages a", "nav.filters a"]


def _luminance(css: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])

    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def focus_rings(page, where: str, problems: list[str]) -> int:
    """Every kind of focusable element: a solid ring of at least 2 px, 3:1 against what is
    behind it (WCAG 1.4.11 / 2.4.13)."""
    checked = 0
    for selector in FOCUSABLE:
        for ring in page.evaluate(FOCUS_RING, selector):
            checked += 1
            ratio = contrast(ring["ring"], ring["behind"])
            if ring["style"] == "none" or ring["width"] < 2 or ratio < 3:
                problems.append(f"{where}: focus ring of {ring['what']}: {ring['style']} "
                                f"{ring['width']} px {ring['ring']} on {ring['behind']} ({ratio:.2f}:1)")
    return checked


def audit(page, where: str, problems: list[str]) -> None:
    """axe on the page as shown, then its width at 320 px."""
    found = page.evaluate(RUN_AXE, WCAG)
    for v in found["violations"]:
        problems.append(f"{where}: {v['id']} ({v['help']}): {v['nodes']}")
    for v in found["incomplete"]:
        if v["id"] in NEVER:
            problems.append(f"{where}: {v['id']} undecided: {v['nodes']}")
    page.set_viewport_size({"width": 320, "height": 900})
    try:
        wider = page.evaluate(WIDER)
        if wider > 0:
            culprits = page.evaluate("""() => [...document.querySelectorAll("body *")]
                .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
                             && !e.closest(".scroll"))
                .slice(0, 5).map(e => e.tagName + (e.id ? "#" + e.id : "") + "." + e.className)""")
            problems.append(f"{where}: {wider} px wider than 320 px: {culprits}")
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_every_org_page_and_form_passes_axe_and_fits_320px(site):
    page, base = site
    org = Organization.objects.get(key="ACME")
    problems: list[str] = []
    urls = org_urls(org)
    rings = 0
    for url in urls:
        response = page.goto(base + url)
        assert response.status == 200, (url, response.status)
        audit(page, url, problems)
        rings += focus_rings(page, url, problems)
    assert rings > 100
    shown = 0
    for url, form, emptied in FORMS_WITH_ERRORS:
        page.goto(base + url)
        for field in emptied:
            page.fill(field, "")
        with page.expect_navigation() as navigation:
            page.click(f"{form} button[type=submit]")
        assert navigation.value.status == 400, (url, navigation.value.status)
        errors = page.locator(".field .error").count()
        assert errors >= max(1, len(emptied)), (url, errors)  # every field's error at once
        for described in page.eval_on_selector_all(
                "[aria-describedby]", "els => els.map(e => e.getAttribute('aria-describedby'))"):
            for ref in described.split():
                assert page.locator(f"#{ref}").count() == 1, (url, ref)
        shown += 1
        audit(page, f"{url} (errors)", problems)
    assert shown == len(FORMS_WITH_ERRORS)
    # The attach preview's own form (a GET) with a pool that is not offered.
    attach = next(u for u in urls if "/attach/" in u).split("?")[0] + "?pool=not-a-pool"
    response = page.goto(base + attach)
    assert response.status in (200, 400), response.status
    assert page.locator("#id_pool_error").count() == 1
    audit(page, f"{attach} (errors)", problems)
    assert problems == [], "\n".join(problems)


def test_org_switcher_needs_an_explicit_submit(site, browser):
    page, base = site
    Organization.objects.create(key="BETA", name="Beta")
    page.goto(base + "/o/ACME/")
    select = page.locator("#org-switch")
    assert select.input_value() == "ACME"
    select.focus()
    page.keyboard.press("ArrowDown")  # keyboard selection alone ...
    page.wait_for_timeout(300)
    assert select.input_value() == "BETA"
    assert page.url == base + "/o/ACME/"  # ... changes nothing
    page.keyboard.press("Tab")  # to the submit button
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == base + "/o/BETA/"
    assert page.locator("header nav a[aria-current=page]").inner_text() == "Dashboard"
    # `/` honours ?org= for an org the user may see, and falls back for any other.
    page.goto(base + "/?org=ACME")
    assert page.url == base + "/o/ACME/"
    page.goto(base + "/?org=NOPE")
    assert page.url == base + "/o/ACME/"
    # Without JavaScript: the same form, submitted.
    cookies = page.context.cookies()
    context = browser.new_context(java_script_enabled=False)
    try:
        context.add_cookies(cookies)
        plain = context.new_page()
        plain.goto(base + "/o/ACME/hypervisors/")
        assert plain.locator("header nav a[aria-current=page]").inner_text() == "Hypervisors"
        plain.select_option("#org-switch", "BETA")
        with plain.expect_navigation():
            plain.click(".switcher button[type=submit]")
        assert plain.url == base + "/o/BETA/"
    finally:
        context.close()


def test_chart_table_holds_the_drawn_points(site):
    page, base = site
    org = Organization.objects.get(key="ACME")
    today = timezone.localdate()
    days = {today - timedelta(days=n): (10 + n % 4, n % 3, 5 - n % 5) for n in (0, 1, 2, 5, 9, 30, 60)}
    for day, (covered, temporary, uncovered) in days.items():
        CoverageSnapshot.objects.update_or_create(org=org, day=day, defaults={
            "guests_covered": covered, "guests_temporary": temporary, "guests_uncovered": uncovered})
    page.goto(base + "/o/ACME/")
    chart = page.locator("#coverage-chart")
    geometry = {name: chart.get_attribute(f"data-{name}") for name in
                ("left", "top", "plot-width", "plot-height", "y-max", "start", "days")}
    left, top = float(geometry["left"]), float(geometry["top"])
    width, height = float(geometry["plot-width"]), float(geometry["plot-height"])
    y_max, span = int(geometry["y-max"]), int(geometry["days"])
    start = date.fromisoformat(geometry["start"])
    assert not page.locator("#chart-table").is_visible()  # collapsed by default
    drawn: dict[str, dict[date, int]] = {}
    for line in page.locator("#coverage-chart polyline").all():
        series, points = line.get_attribute("data-series"), line.get_attribute("points")
        # Told apart without colour: each line has its own dash pattern or markers.
        drawn[series] = {}
        for pair in points.split():
            x, y = (float(v) for v in pair.split(","))
            day = start + timedelta(days=round((x - left) * (span - 1) / width))
            drawn[series][day] = round((1 - (y - top) / height) * y_max)
    assert len({page.locator(f"#coverage-chart polyline[data-series={s}]").get_attribute(
        "stroke-dasharray") for s in drawn}) == 3
    assert len({m.get_attribute("class") for m in page.locator("#coverage-chart path").all()}) == 3
    page.click("#chart-data summary")
    assert page.locator("#chart-table").is_visible()
    columns = page.eval_on_selector_all("#chart-table thead th[data-series]",
                                        "els => els.map(e => e.dataset.series)")
    table: dict[str, dict[date, int]] = {s: {} for s in columns}
    for row in page.locator("#chart-table tbody tr").all():
        day = date.fromisoformat(row.locator("th").inner_text().strip())
        for series, cell in zip(columns, row.locator("td").all(), strict=True):
            table[series][day] = int(re.sub(r"\D", "", cell.inner_text()))
    assert table == drawn
    assert len(table["valid"]) >= len(days)
    assert {day: table["valid"][day] for day in days} == {day: v[0] for day, v in days.items()}
    assert {day: table["invalid"][day] for day in days} == {day: v[2] for day, v in days.items()}
