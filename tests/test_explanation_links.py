"""The system page's explanation chain links to the pages it names (issue 11 item 6): the
pool, the subscription, the host, and the entitlement's certificate (its row on the page)."""

from __future__ import annotations

import re

import pytest

from hypervisors import services as mapping
from orgs import services as orgs
from subscriptions import services as subs
from subscriptions.models import EntitlementCertificate, Pool
from tests.scenario import acme

pytestmark = [pytest.mark.django_db]


def test_chain_links_pool_subscription_host_and_certificate(settings, tmp_path, client):
    settings.DATA_DIR = tmp_path  # a CA of this test's own
    org = acme()
    subscription = subs.create_subscription(org, "VDC", 1)
    host, _ = mapping.report_hypervisor(org, "esx-l", "esx-l", guests=[{"guestId": "g-link"}])
    guest = mapping.register_consumer(org, "vm-link", {"virt.is_guest": "true", "virt.uuid": "g-link"},
                                      [{"productId": "479"}])
    subs.resolve_system(guest.id, requested=True)
    pool = Pool.objects.get(requires_host=host)
    cert = EntitlementCertificate.objects.get(system=guest)

    client.force_login(orgs.set_member_role(org, "ui-viewer", "viewer"))
    page = client.get(f"/o/ACME/systems/{guest.uuid}/").content.decode()
    chain = re.search(r'<ol class="chain".*?</ol>', page, re.S).group(0)
    hrefs = re.findall(r'href="([^"]+)"', chain)
    assert f"/o/ACME/pools/{pool.uuid}/" in hrefs
    assert f"/o/ACME/subscriptions/{subscription.uuid}/" in hrefs
    assert f"/o/ACME/hypervisors/{host.uuid}/" in hrefs
    assert f"#cert-{cert.serial}" in hrefs and "#entitlements" in hrefs
    assert f'id="cert-{cert.serial}"' in page  # the certificate's row the link lands on
    for href in hrefs:
        if href.startswith("/"):
            assert client.get(href).status_code == 200, href


def test_system_page_says_when_the_client_keeps_itself_uncovered(settings, tmp_path, client):
    settings.DATA_DIR = tmp_path
    org = acme()
    subs.create_subscription(org, "RHEL-4G", 1)
    system = mapping.register_consumer(org, "box-intent", {}, [{"productId": "479"}])
    subs.resolve_system(system.id, requested=True)
    client.force_login(orgs.set_member_role(org, "ui-viewer", "viewer"))
    url = f"/o/ACME/systems/{system.uuid}/"
    assert 'id="client-intent"' not in client.get(url).content.decode()
    subs.remove_own_entitlements(system)  # remove --all
    page = client.get(url).content.decode()
    assert 'id="client-intent"' in page and "removed its own entitlements" in page
