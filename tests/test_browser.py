"""Browser tests: headless Chromium (Debian's ``chromium``) driven by Playwright against a live
server (gunicorn) and a real Celery worker, on the demo data of ``manage.py seed_demo``.

Sign in; the dashboard shows the demo counts; on kvm01 (whose registered guest test01 is not
covered) attach the VDC subscription; after the worker ran, test01 is covered and its
explanation names the host and the subscription; download a virt-who configuration. Every page
visited is saved as a PNG under ``test-output/screenshots/``.

Chromium is launched by tests/browser.py (the system's ``/usr/bin/chromium``; never
``playwright install``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.core.cache import cache

from hypervisors.models import Report
from orgs.models import Organization, System
from subscriptions import coverage
from subscriptions import services as subs
from subscriptions.models import Pool
from subscriptions.tasks import record_coverage_snapshots
from tests.browser import chromium, seed_demo
from tests.workers import (
    ROOT,
    flush_broker,
    free_port,
    require_services,
    start_web,
    start_worker,
    wait_until,
)

SHOTS = ROOT / "test-output" / "screenshots"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    with chromium() as launched:
        yield launched


def seed() -> str:
    return seed_demo()


class Pages:
    """A signed-in tab on the live server that screenshots every page it shows."""

    def __init__(self, page, base: str):
        self.page, self.base = page, base

    def go(self, path: str, shot: str | None = None):
        response = self.page.goto(self.base + path)
        assert response is not None and response.status == 200, (path, response and response.status)
        if shot:
            self.shot(shot)
        return response

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()


def test_demo_in_chromium(browser, tmp_path):
    require_services()
    password = seed()
    org = Organization.objects.get(key="ACME")
    demo = coverage.compute(org)
    # The demo (seed_demo's docstring): 7 guests covered (esx01's 3 through VDC, esx02's 4
    # through RHEL-4G), new-vm01 temporary, dev05, test01 and old-vm01 not covered; esx01 and
    # esx02 hold a subscription, kvm01 none.
    assert demo == coverage.Coverage(7, 1, 3, 2, 1)
    record_coverage_snapshots.delay()  # today's point of the chart (beat does it daily)

    flush_broker()
    worker = start_worker(concurrency=2)
    port = free_port()
    web = start_web(port)
    base = f"http://127.0.0.1:{port}"
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    ui = Pages(page, base)
    try:
        # --- sign in -> the org's dashboard with the demo counts
        ui.go("/accounts/login/", "01-sign-in")
        page.fill("#id_username", "admin")
        page.fill("#id_password", password)
        page.click("main form button[type=submit]")
        page.wait_for_url(f"{base}/o/ACME/")
        ui.shot("02-dashboard")
        assert ui.text("#count-covered") == "7"
        assert ui.text("#count-temporary") == "1"
        assert ui.text("#count-uncovered") == "3"
        assert ui.text("#count-hv-with") == "2"
        assert ui.text("#count-hv-without") == "1"
        assert "virt-who-demo" in ui.text("#reporters")
        assert page.locator("#coverage-chart polyline").count() == 3

        # --- the other pages, for the record
        ui.go("/o/ACME/hypervisors/", "03-hypervisors")
        ui.go("/o/ACME/systems/", "04-systems")
        ui.go("/o/ACME/subscriptions/", "05-subscriptions")
        ui.go("/o/ACME/reports/", "06-reports")
        ui.go("/o/ACME/members/", "07-members")
        ui.go("/o/ACME/tokens/", "08-tokens")

        # --- the demo's only VDC is taken by esx01: buy a second unit first. So that the
        # server does not attach it to kvm01 by itself on the way (host auto-attach), turn
        # hypervisor auto-attach off in the settings page first.
        ui.go("/o/ACME/settings/", "09-settings")
        page.uncheck("#id_hypervisor_autobind_enabled")
        page.click("main form button[type=submit]")
        page.wait_for_url(f"{base}/o/ACME/settings/")
        assert "Settings saved." in page.content()
        org.refresh_from_db()
        assert org.hypervisor_autobind_enabled is False
        vdc_pool = Pool.objects.get(org=org, type=Pool.Type.NORMAL, product__sku="VDC")
        subs.update_subscription(org, vdc_pool.subscription.uuid, quantity=2)
        cache.clear()

        # --- kvm01 has test01, registered and not covered
        kvm01 = System.objects.get(org=org, name="kvm01.acme.example")
        test01 = System.objects.get(org=org, name="test01.acme.example")
        assert subs.compliance_for(test01).status == "invalid"
        ui.go(f"/o/ACME/systems/{test01.uuid}/", "10-test01-not-covered")
        ui.go(f"/o/ACME/hypervisors/{kvm01.uuid}/", "11-kvm01")
        assert "test01.acme.example" in page.content()
        page.select_option("select[name=pool]", value=str(vdc_pool.uuid))
        page.click("form[action$='/attach/'] button[type=submit]")
        page.wait_for_url(re.compile(r".*/attach/\?.*"))
        ui.shot("12-attach-preview")
        assert "test01.acme.example" in page.content()
        page.click("form[method=post][action$='/attach/'] button[type=submit]")
        page.wait_for_url(f"{base}/o/ACME/hypervisors/{kvm01.uuid}/")
        ui.shot("13-kvm01-attached")

        # --- the worker resolves test01: covered through kvm01's VDC
        def covered() -> bool:
            ui.go(f"/o/ACME/systems/{test01.uuid}/")
            return "covered through host kvm01.acme.example's subscription VDC" in page.content()

        wait_until(covered, "test01 covered through kvm01's VDC (worker)")
        ui.shot("14-test01-covered")
        body = page.content()
        assert "kvm01.acme.example" in body and "VDC" in body

        ui.go("/o/ACME/", "15-dashboard-after")
        assert ui.text("#count-covered") == "8"
        assert ui.text("#count-uncovered") == "2"
        assert ui.text("#count-hv-with") == "3"

        # --- virt-who setup: create a token and download the configuration
        ui.go("/o/ACME/setup/", "16-setup-form")
        page.select_option("#id_hypervisor_type", "esx")
        page.fill("#id_section", "esx-lab")
        page.fill("#id_server", "vcenter.lab.example")
        page.fill("#id_username", "virtwho@vsphere.local")
        page.fill("#id_reporter_id", "virt-who-lab")
        page.click("#virt-who-form button[type=submit]")
        page.wait_for_selector("#virt-who-config")
        ui.shot("17-setup-config")
        shown = page.input_value("#config-text")
        with page.expect_download() as info:
            page.click("#download-config")
        download = info.value
        assert download.suggested_filename == "esx-lab.conf"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        text = saved.read_text()
        assert text == shown.replace("\r\n", "\n")
        for line in ("[esx-lab]", "type=esx", "server=vcenter.lab.example", "owner=ACME",
                     "rhsm_hostname=127.0.0.1", f"rhsm_port={port}", "rhsm_prefix=/candlepin",
                     "rhsm_username=virt-who", "reporter_id=virt-who-lab", "hypervisor_id=hostname"):
            assert line in text.splitlines(), line
        assert re.search(r"^rhsm_password=sam_\S+$", text, re.M)
        (SHOTS.parent / "esx-lab.conf").write_text(re.sub(r"rhsm_password=\S+", "rhsm_password=…", text))
        assert not Report.objects.filter(state="FAILED").exists()
        for proc in (web, worker):
            assert "Traceback" not in proc.output(), proc.output()[-4000:]
    except Exception:
        try:
            ui.shot("zz-failure")
        except Exception:  # noqa: BLE001 - the original failure matters
            pass
        print("web:", web.output()[-3000:], "\nworker:", worker.output()[-3000:], sep="\n")
        raise
    finally:
        context.close()
        web.kill()
        worker.kill()
    assert os.listdir(SHOTS)
