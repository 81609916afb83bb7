"""One definition per domain rule (issue 9 item 5): over the demo data, every dashboard count
equals the number of rows of the list it links to, in the UI and in the REST API, and the
hypervisor / physical / guest words agree everywhere (the Candlepin adapter included)."""

from __future__ import annotations

import base64
import html
import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from orgs.models import Organization, System
from subscriptions import coverage

# seed_demo reports hypervisors (temporary staging tables dropped at commit): real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    call_command("seed_demo", stdout=io.StringIO())
    client = Client()
    client.force_login(get_user_model().objects.get(username="admin"))
    yield Organization.objects.get(key="ACME"), client
    cache.clear()


def _cards(page: str) -> list[tuple[str, int]]:
    """(link, number) of each count card of the dashboard."""
    found = re.findall(r'<a [^>]*href="([^"]+)"[^>]*id="count-[a-z-]+"[^>]*>(\d+)</a>', page)
    return [(html.unescape(href), int(n)) for href, n in found]


def test_every_dashboard_count_equals_the_rows_of_its_list(demo):
    org, client = demo
    page = client.get(reverse("sam:dashboard", kwargs={"org_key": org.key})).content.decode()
    cards = _cards(page)
    counts = coverage.compute(org)
    assert sorted(n for _, n in cards) == sorted(counts.as_dict().values())
    assert len(cards) == 5
    for href, number in cards:
        response = client.get(href)
        assert response.status_code == 200, href
        assert response.context["page"].paginator.count == number, href
        # The REST API answers the same filter with the same rows.
        path, query = href.split("?")
        kind = "hypervisors" if "/hypervisors/" in path else "systems"
        rows = client.get(f"/api/v1/orgs/{org.key}/{kind}/?{query}&limit=500").json()["results"]
        assert len(rows) == number, href


def test_hypervisor_physical_and_guest_agree_everywhere(demo):
    org, client = demo
    systems = System.objects.filter(org=org)
    hypervisors = sorted(systems.hypervisors().values_list("name", flat=True))
    # bare01 registered with its DMI UUID (kept as hypervisor id for virt-who), but no report
    # named it: physical, not a hypervisor.
    assert [n.split(".")[0] for n in hypervisors] == ["esx01", "esx02", "kvm01"]
    physical = [s.name.split(".")[0] for s in systems.physical()]
    assert physical == ["bare01"]

    def ui(path: str, **params) -> list[str]:
        response = client.get(reverse(f"hypervisors:{path}", kwargs={"org_key": org.key}), params)
        return sorted(s.name for s in response.context["page"].object_list)

    assert ui("hypervisor_list") == hypervisors
    assert ui("system_list", type="hypervisor") == hypervisors
    assert [n.split(".")[0] for n in ui("system_list", type="physical")] == ["bare01"]
    assert ui("system_list", type="guest") == sorted(systems.guests().values_list("name", flat=True))
    api = client.get(f"/api/v1/orgs/{org.key}/hypervisors/?limit=500").json()["results"]
    assert sorted(r["name"] for r in api) == hypervisors
    # Not covered = no entitlement in force; a hypervisor is never listed among the guests.
    uncovered = ui("system_list", type="guest", coverage="uncovered")
    assert uncovered and not set(uncovered) & set(hypervisors)
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("demo-pass-1")
    admin.save()
    token = base64.b64encode(b"admin:demo-pass-1").decode()
    candlepin = Client().get(f"/candlepin/owners/{org.key}/hypervisors",
                             HTTP_AUTHORIZATION=f"Basic {token}")
    assert candlepin.status_code == 200, candlepin.content
    assert sorted(r["name"] for r in candlepin.json()) == hypervisors


def _csv(response) -> list[dict]:
    import csv

    assert response.status_code == 200
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_exports_apply_the_list_filter_and_the_permissions(demo):
    org, client = demo
    base = f"/o/{org.key}"
    rows = _csv(client.get(f"{base}/systems/export.csv?type=guest&coverage=uncovered"))
    listed = client.get(f"{base}/systems/?type=guest&coverage=uncovered").context["page"]
    assert sorted(r["name"] for r in rows) == sorted(s.name for s in listed.object_list)
    assert {r["coverage"] for r in rows} == {"uncovered"} and {r["type"] for r in rows} == {"guest"}
    assert len(_csv(client.get(f"{base}/systems/export.csv"))) == System.objects.filter(org=org).count()
    hv = _csv(client.get(f"{base}/hypervisors/export.csv?subscribed=no"))
    assert [r["name"].split(".")[0] for r in hv] == ["kvm01"] and hv[0]["subscribed"] == "no"
    subs_rows = _csv(client.get(f"{base}/subscriptions/export.csv?product=VDC"))
    assert [(r["sku"], r["contract_number"]) for r in subs_rows] == [("VDC", "10001")]
    assert len(_csv(client.get(f"{base}/subscriptions/export.csv"))) == 3
    # Someone without a role in the org gets a 404, a signed-out visitor the sign-in page.
    outsider = get_user_model().objects.create_user("outsider", password="outsider-pass-1")
    other = Client()
    other.force_login(outsider)
    for kind in ("systems", "hypervisors", "subscriptions"):
        assert other.get(f"{base}/{kind}/export.csv").status_code == 404
        assert Client().get(f"{base}/{kind}/export.csv").status_code == 302


def test_advice_when_every_host_subscription_is_used_names_this_host():
    """"Add quantity to VDC" alone does not help while host auto-attach may give the new unit
    to another host: the advice says to attach it to this guest's host."""
    from tests import scenario

    org = scenario.acme()
    scenario.subscribe(org, "VDC", 1)
    scenario.report(org, "esx1", ["g1"])
    scenario.report(org, "esx2", ["g2"])
    scenario.guest(org, "g1")
    g2 = scenario.guest(org, "g2")
    item = scenario.explanation(g2)
    assert item["reason"] == "pool_exhausted"
    assert "attach it to host esx2" in item["action"]
    assert "auto-attach on" in item["action"]
    Organization.objects.filter(pk=org.pk).update(hypervisor_autobind_enabled=False)
    item = scenario.explanation(g2)
    assert "attach it to host esx2" in item["action"] and "auto-attach" not in item["action"]
