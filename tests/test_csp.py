"""Every page satisfies the Content-Security-Policy: headless Chromium against ``manage.py serve``
(HTTPS) on the demo data visits the sign-in page, every org page (found from the URL patterns,
so a new page is visited without editing this test), a form shown with errors, the error pages,
the admin, Swagger UI and ReDoc, and records every ``securitypolicyviolation`` event and every
console message about the policy: there must be none.

The policy itself is in sam/settings.py (``CONTENT_SECURITY_POLICY``); README "Security headers".
"""

from __future__ import annotations

import json

import pytest

from hypervisors import reports
from orgs.models import Organization, System
from subscriptions.models import Subscription
from tests import rhsm_helper
from tests.browser import chromium, org_urls, seed_demo

pytestmark = [pytest.mark.django_db(transaction=True)]

# Recorded in every document before any of its own content is parsed.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.effectiveDirective + " blocked " + (e.blockedURI || "inline") + " at "
                    + (e.sourceFile || location.href) + ":" + e.lineNumber);
});
"""


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


class Visitor:
    """One tab that collects policy violations and checks each document carries the policy."""

    def __init__(self, page, base: str):
        self.page, self.base = page, base
        self.violations: list[str] = []
        self.console: list[str] = []
        self.visited: list[str] = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._console)

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(f"{self.page.url}: {message.text}")

    def go(self, path: str, status: int = 200, ready: str | None = None) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.status == status, (path, response and response.status)
        self.check(path, response, ready)

    def check(self, path: str, response, ready: str | None = None) -> None:
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, (path, policy)
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (path, policy)
        if ready:
            self.page.wait_for_selector(ready, timeout=30_000)
        self.page.wait_for_load_state("load")
        self.page.wait_for_timeout(150)  # late violations (scripts that insert styles)
        found = self.page.evaluate("window.__csp || []")
        self.violations += [f"{path}: {v}" for v in found]
        self.visited.append(path)


@pytest.mark.postgres_only("manage.py serve in another process shares the test database: "
                           "PostgreSQL (SQLite's test database is in memory)")
def test_every_page_satisfies_the_content_security_policy(browser, tmp_path):
    password = seed_demo()
    org = Organization.objects.get(key="ACME")
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": "esx09"}, "name": "esx09.acme.example",
                             "guestIds": [{"guestId": "vm-9", "state": 1}], "facts": {}}]}
    reports.accept_checkin(org, json.dumps(body).encode(), reporter_id="virt-who-lab")
    urls = org_urls(org)
    # More threads than the default 4: Chromium keeps spare TLS connections open without a
    # request on them, and each such connection holds a gthread thread while it waits.
    server = rhsm_helper.start_server(tmp_path / "data", args=("--threads", "8"))
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    visitor = Visitor(context.new_page(), server.url)
    page = visitor.page
    try:
        visitor.go("/accounts/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        with page.expect_navigation():
            page.click("main form button[type=submit]")
        assert page.url == f"{server.url}/o/ACME/"

        for url in urls:
            visitor.go(url)
        visitor.go("/o/ACME/")
        assert page.locator("#coverage-chart polyline").count() == 3  # the chart is drawn

        # A form shown with its errors, and the token page after a token was created.
        visitor.go("/o/ACME/setup/")
        with page.expect_navigation() as navigation:
            page.click("#virt-who-form button[type=submit]")
        assert navigation.value.status == 400
        visitor.check("/o/ACME/setup/ (errors)", navigation.value)
        assert page.locator(".field .error").count() >= 1

        visitor.go("/o/NOPE/", status=404)
        visitor.go("/no-such-page/", status=404)

        # The operators' admin: the index, every model's list, and some change and add forms.
        visitor.go("/admin/")
        admin_links = sorted(set(page.eval_on_selector_all(
            "#content-main a[href^='/admin/'][href$='/']", "els => els.map(e => e.getAttribute('href'))")))
        lists = [link for link in admin_links if link.count("/") == 4]
        assert len(lists) >= 8, admin_links
        for link in lists:
            visitor.go(link)
        for model in (System, Subscription, Organization):
            obj = model.objects.order_by("pk").first()
            visitor.go(f"/admin/{model._meta.app_label}/{model._meta.model_name}/{obj.pk}/change/")
        visitor.go("/admin/auth/user/add/")

        # The API viewers, rendered (they build their pages with scripts after loading).
        visitor.go("/api/docs/", ready=".swagger-ui .information-container .title")
        visitor.go("/api/redoc/", ready="#redoc-container h1")
        assert "sam API" in page.inner_text("#redoc-container h1")

        # Signed out: the admin's own sign-in page.
        context.clear_cookies()
        visitor.go("/admin/login/?next=/admin/")
    finally:
        context.close()
        rhsm_helper.stop_server(server)
    assert len(visitor.visited) >= len(urls) + 15
    assert visitor.violations == [], "\n".join(visitor.violations)
    assert visitor.console == [], "\n".join(visitor.console)
    assert "Traceback" not in server.log(), server.log()[-4000:]
