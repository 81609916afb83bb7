"""Shared pieces of the browser tests: launching Debian's Chromium through Playwright, the demo
data with its admin password, and a URL for every org page of the web UI.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (``.ci/run``
installs it with apt-get).
"""

from __future__ import annotations

import io
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver

from hypervisors.models import Report
from orgs.models import Organization, System
from subscriptions.models import Entitlement, Pool, Subscription

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

# Org pages that only take a POST (GET redirects or answers 405): nothing to render.
POST_ONLY = {"orgs:setup_download", "hypervisors:system_resolve", "hypervisors:hypervisor_remove",
             "hypervisors:system_remove"}
# CSV downloads, not pages (tests/test_definitions.py reads them).
DOWNLOADS = {"hypervisors:system_export", "hypervisors:hypervisor_export",
             "subscriptions:subscription_export"}


@contextmanager
def chromium():
    """A headless Chromium for the duration of the block."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls of the test
    # itself are plain synchronous code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def seed_demo() -> str:
    """Load the demo data (``manage.py seed_demo``); returns the admin's password."""
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    match = re.search(r"^Admin password: (\S+)$", out.getvalue(), re.M)
    assert match, out.getvalue()
    return match.group(1)


def org_routes() -> dict[str, str]:
    """``{"app:name": route}`` of every web UI page under ``o/<org_key>/``."""
    found: dict[str, str] = {}

    def walk(patterns, prefix: str, namespace: str | None) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                ns = entry.namespace or namespace
                walk(entry.url_patterns, prefix + str(entry.pattern), ns)
            elif isinstance(entry, URLPattern) and prefix.startswith("o/<slug:org_key>/"):
                found[f"{namespace}:{entry.name}"] = prefix + str(entry.pattern)

    walk(get_resolver().url_patterns, "", None)
    return found


def org_urls(org: Organization) -> list[str]:
    """A URL for every GET page of ``org``, with real objects of the demo for the ids."""
    hypervisor = System.objects.filter(org=org, type=System.Type.HYPERVISOR).order_by("name").first()
    guest = System.objects.filter(org=org, type=System.Type.SYSTEM).order_by("name").first()
    subscription = Subscription.objects.filter(org=org).order_by("pk").first()
    pool = Pool.objects.filter(org=org).order_by("pk").first()
    report = Report.objects.filter(org=org).order_by("pk").first()
    entitlement = Entitlement.objects.filter(system=hypervisor).first()
    ids = {
        "hypervisors:hypervisor_detail": hypervisor.uuid, "hypervisors:hypervisor_attach": hypervisor.uuid,
        "hypervisors:system_detail": guest.uuid, "hypervisors:report_detail": report.uuid,
        "hypervisors:system_delete": guest.uuid,
        "subscriptions:subscription_detail": subscription.uuid,
        "subscriptions:subscription_edit": subscription.uuid,
        "subscriptions:subscription_delete": subscription.uuid, "subscriptions:pool_detail": pool.uuid,
    }
    urls = []
    for name, route in sorted(org_routes().items()):
        if name in POST_ONLY or name in DOWNLOADS:
            continue
        path = route.replace("<slug:org_key>", org.key)
        if "<uuid:uuid>" in path:
            assert name in ids, f"{name} ({route}) is a new page: tell this test which object to show"
            path = path.replace("<uuid:uuid>", str(ids[name]))
        assert "<" not in path, (name, route)
        if name == "hypervisors:hypervisor_attach":
            path += f"?pool={pool.uuid}"
        urls.append("/" + path)
    assert entitlement is not None  # the demo's esx01 holds the VDC
    return urls
