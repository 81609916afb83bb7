"""Issue 9's acceptance in headless Chromium, on whatever database the run uses (``./scripts/test``
runs it on PostgreSQL and on SQLite, the embedded default): the demo data loaded, sign in, the
dashboard with its chart, every org page answers 200, a hypervisor page, attach through the
buttons (disabled with the reason while the preview refuses), back on the hypervisor page, and
the guest covered with its explanation.

The server is pytest-django's in-process live server (it shares the test database, SQLite's
in-memory one included); background tasks run in-process, as in the embedded default.
"""

from __future__ import annotations

import json
import re

import pytest
from django.core.cache import cache

from hypervisors import reports
from orgs.models import Organization, System
from subscriptions import services as subs
from subscriptions.models import Pool
from tests.browser import chromium, org_urls, seed_demo

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


def test_demo_attach_through_the_buttons(browser, live_server, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    password = seed_demo()
    org = Organization.objects.get(key="ACME")
    # One virt-who report, so the report pages have one to show (applied in-process).
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": "esx09"}, "name": "esx09.acme.example",
                             "guestIds": [{"guestId": "vm-9", "state": 1}], "facts": {}}]}
    reports.accept_checkin(org, json.dumps(body).encode(), reporter_id="virt-who-lab")
    base = live_server.url
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()

    def go(path: str):
        response = page.goto(base + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        return response

    go("/accounts/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("main form button[type=submit]")
    page.wait_for_url(f"{base}/o/ACME/")
    assert page.locator("#coverage-chart polyline").count() == 3
    assert page.inner_text("#count-uncovered").strip() == "3"

    # Every org page answers 200.
    kvm01 = System.objects.get(org=org, name="kvm01.acme.example")
    test01 = System.objects.get(org=org, name="test01.acme.example")
    vdc = Pool.objects.get(org=org, type=Pool.Type.NORMAL, product__sku="VDC")
    for path in org_urls(org):
        go(path)

    # The only VDC unit is esx01's: the preview refuses, and Attach is disabled with the reason.
    go(f"/o/ACME/hypervisors/{kvm01.uuid}/")
    page.click("#attach-button")
    page.wait_for_url(re.compile(r".*/attach/$"))
    page.select_option("select[name=pool]", value=str(vdc.uuid))
    page.click("main form[method=get] button[type=submit]")
    page.wait_for_url(re.compile(r".*/attach/\?.*"))
    attach = page.locator("form[method=post][action$='/attach/'] button[type=submit]")
    assert attach.is_disabled()
    assert "pool_exhausted" in page.inner_text("#refusal")

    # A second VDC unit, hypervisor auto-attach off (so the server does not attach it itself).
    Organization.objects.filter(pk=org.pk).update(hypervisor_autobind_enabled=False)
    subs.update_subscription(org, vdc.subscription.uuid, quantity=2)
    cache.clear()

    # test01's "What to do" offers the attach on its host; the preview allows it now.
    go(f"/o/ACME/systems/{test01.uuid}/")
    assert "not covered" in page.content() or "invalid" in page.content()
    page.click("text=Attach subscription to kvm01.acme.example")
    page.wait_for_url(re.compile(rf".*/hypervisors/{kvm01.uuid}/attach/$"))
    page.select_option("select[name=pool]", value=str(vdc.uuid))
    page.click("main form[method=get] button[type=submit]")
    page.wait_for_url(re.compile(r".*/attach/\?.*"))
    assert "test01.acme.example" in page.content()
    assert attach.is_enabled()
    attach.click()
    page.wait_for_url(f"{base}/o/ACME/hypervisors/{kvm01.uuid}/")

    go(f"/o/ACME/systems/{test01.uuid}/")
    assert "covered through host kvm01.acme.example's subscription VDC" in page.content()
    go("/o/ACME/")
    assert page.inner_text("#count-uncovered").strip() == "2"
