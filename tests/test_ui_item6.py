"""Web UI pieces of issue 9 item 6: deleting a system after a confirmation that lists what it
loses (through the API's delete service); human labels for pool types and reason keys with the
key in small print; contract numbers on pool rows and "show all" instead of a silent cap;
reporter health in one wording, with the expiry of each reporter's token; the virt-who setup
page that gives new tokens an expiry and offers to reuse one."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from hypervisors.models import Report
from orgs import services as orgs
from orgs.auth import verify
from orgs.models import ApiToken, System
from sam import dashboard
from subscriptions import services as subs
from subscriptions.labels import POOL_TYPES, REASONS
from subscriptions.models import Entitlement, Pool
from tests import scenario
from tests.test_ui_dashboard import build_world
from tests.test_ui_orgs import ESX, _parse, make_ui_actors

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(transactional_db):
    cache.clear()
    org = scenario.acme()
    actors = make_ui_actors(org)
    build_world(org)
    yield actors
    cache.clear()


def url(name: str, org, **kwargs) -> str:
    return reverse(name, kwargs={"org_key": org.key, **kwargs})


# --- delete a system ---------------------------------------------------------------------------

def test_delete_a_hypervisor_after_seeing_what_it_loses(world):
    org = world.org
    esx = System.objects.get(org=org, name="esx01")
    page = url("hypervisors:system_delete", org, uuid=esx.uuid)
    assert world.clients["viewer"].get(page).status_code == 403
    assert world.clients["other_admin"].get(page).status_code == 404
    # The system page links to it for admins only.
    detail = url("hypervisors:system_detail", org, uuid=esx.uuid)
    assert 'id="delete-system"' in world.clients["admin"].get(detail).content.decode()
    assert 'id="delete-system"' not in world.clients["viewer"].get(detail).content.decode()

    response = world.clients["admin"].get(page)
    assert response.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))
    assert "1 entitlement revoked" in text and "VDC × 1" in text and "contract C-VDC" in text
    assert "1 pool for its guests deleted" in text and "2 guest entitlements" in text
    assert "2 guests lose esx01 as host" in text and "g1" in text and "g2" in text
    assert System.objects.filter(pk=esx.pk).exists()  # looking changed nothing

    assert world.clients["viewer"].post(page).status_code == 403
    assert System.objects.filter(pk=esx.pk).exists()
    response = world.clients["admin"].post(page)
    assert response.status_code == 302 and response["Location"] == url("hypervisors:system_list", org)
    assert not System.objects.filter(pk=esx.pk).exists()
    assert not Pool.objects.filter(org=org, requires_host_id=esx.pk).exists()
    g1 = System.objects.get(org=org, name="g1")
    assert g1.current_host_id is None
    assert not Entitlement.objects.filter(system=g1, pool__requires_host__isnull=False).exists()
    assert world.clients["admin"].get(page).status_code == 404


# --- labels ------------------------------------------------------------------------------------

def test_pool_types_and_reason_keys_have_labels_with_the_key_in_small_print(world):
    org = world.org
    assert set(POOL_TYPES) == set(Pool.Type.values)
    page = world.clients["viewer"].get(url("sam:dashboard", org)).content.decode()
    assert '<td>Subscription pool <small class="key"><code>NORMAL</code></small></td>' in page
    assert '<small class="key"><code>UNMAPPED_GUEST</code></small>' in page
    g4 = System.objects.get(org=org, name="g4")  # not covered
    page = world.clients["viewer"].get(url("hypervisors:system_detail", org, uuid=g4.uuid)).content.decode()
    assert f'{REASONS["NOTCOVERED"]} <small class="key"><code>NOTCOVERED</code></small>' in page
    pools = world.clients["viewer"].get(url("subscriptions:pool_list", org)).content.decode()
    assert "Host-derived pool" in pools and "<code>ENTITLEMENT_DERIVED</code>" in pools


def test_pool_rows_show_contracts_and_all_pools_on_request(world):
    org = world.org
    now = timezone.now()
    for i in range(dashboard.TOP_POOLS + 1):
        subs.create_subscription(org, "RHEL-4G", 1, start=now - timedelta(days=1),
                                 end=now + timedelta(days=30 + i), contract_number=f"C-{i:03}")
    client = world.clients["viewer"]
    page = client.get(url("sam:dashboard", org)).content.decode()
    table = page[page.index('id="pools"'):page.index("</table>", page.index('id="pools"'))]
    assert table.count("<tr>") - 1 == dashboard.TOP_POOLS
    assert "<td>C-VDC</td>" in table
    assert 'id="pools-all"' in page
    page = client.get(url("sam:dashboard", org) + "?pools=all").content.decode()
    table = page[page.index('id="pools"'):page.index("</table>", page.index('id="pools"'))]
    shared = Pool.objects.filter(org=org, requires_host__isnull=True).count()
    assert table.count("<tr>") - 1 == shared > dashboard.TOP_POOLS + 1
    assert all(f"<td>C-{i:03}</td>" in table for i in range(dashboard.TOP_POOLS + 1))
    assert 'id="pools-all"' not in page


# --- reporter health ---------------------------------------------------------------------------

def _checkin(org, reporter: str, hours_ago: float) -> None:
    report = Report.objects.create(org=org, reporter_id=reporter, kind="checkin", state="FINISHED")
    when = timezone.now() - timedelta(hours=hours_ago)
    Report.objects.filter(pk=report.pk).update(created=when, finished=when)


def test_reporter_health_shows_token_expiry_and_one_wording(world):
    org = world.org
    now = timezone.now()
    for reporter in ("vw-soon", "vw-gone", "vw-far", "vw-never"):
        _checkin(org, reporter, 2)
        _checkin(org, reporter, 1)
    orgs.create_token(org, "virt-who vw-soon", "reporter", reporter_id="vw-soon",
                      expires=now + timedelta(days=10, hours=1))
    gone, _ = orgs.create_token(org, "virt-who vw-gone", "reporter", reporter_id="vw-gone",
                                expires=now + timedelta(days=1))
    ApiToken.objects.filter(pk=gone.pk).update(expires=now - timedelta(days=1))
    orgs.create_token(org, "virt-who vw-far", "reporter", reporter_id="vw-far",
                      expires=now + timedelta(days=31))
    orgs.create_token(org, "virt-who vw-far old", "reporter", reporter_id="vw-far",
                      expires=now + timedelta(days=5))  # the longer-lived one counts
    orgs.create_token(org, "virt-who vw-never", "reporter", reporter_id="vw-never")
    reporters = {r.reporter_id: r for r in dashboard.reporter_health(org, now)}
    assert reporters["vw-soon"].warnings == [
        f"its token “virt-who vw-soon” expires in 10 days ({(now + timedelta(days=10, hours=1)):%Y-%m-%d}): "
        "make a new one on the setup page"]
    assert "expired on" in reporters["vw-gone"].warnings[0]
    assert reporters["vw-far"].warnings == [] and reporters["vw-far"].token_name == "virt-who vw-far"
    assert reporters["vw-never"].warnings == [] and reporters["vw-never"].token_expires is None
    # esx01 and kvm01 came without a report of their reporter: not "OK", the page's own words.
    assert reporters[""].reported is False
    page = world.clients["viewer"].get(url("sam:dashboard", org)).content.decode()
    assert "OK (" not in page and "came another way" not in page
    row = re.search(r"<tr>\s*<td>\(no reporter id\)</td>(.*?)</tr>", page, re.S).group(1)
    assert "No report received yet; its hypervisors were registered another way" in row
    assert f"{now + timedelta(days=31):%Y-%m-%d}" in page


# --- virt-who setup: expiry and reuse ----------------------------------------------------------

def test_setup_gives_new_tokens_an_expiry_and_offers_to_reuse_one(world):
    org, client = world.org, world.clients["admin"]
    response = client.post(url("orgs:setup", org), dict(ESX, expires_days=""))
    assert response.status_code == 200
    token = verify(_parse(response.context["config"])["esx-vcenter1"]["rhsm_password"])
    assert token.reporter_id == "vw-prod"
    assert abs(token.expires - (timezone.now() + timedelta(days=365))) < timedelta(minutes=5)
    assert f"expires {token.expires:%Y-%m-%d}" in response.content.decode()
    response = client.post(url("orgs:setup", org), dict(ESX, expires_days="30"))
    short = ApiToken.objects.get(org=org, name="virt-who vw-prod (2)")
    assert abs(short.expires - (timezone.now() + timedelta(days=30))) < timedelta(minutes=5)

    # The form offers the usable reporter tokens; reusing one mints none.
    revoked, _ = orgs.create_token(org, "old", "reporter")
    orgs.revoke_token(org, revoked.pk)
    page = client.get(url("orgs:setup", org))
    offered = {str(value) for value, _ in page.context["form"].fields["token"].choices}
    assert str(token.pk) in offered and str(revoked.pk) not in offered
    assert re.search(rf'<option value="{token.pk}"', page.content.decode())
    before = ApiToken.objects.count()
    response = client.post(url("orgs:setup", org), dict(ESX, token=str(token.pk), reporter_id="vw-lab"))
    assert response.status_code == 200 and ApiToken.objects.count() == before
    config = response.context["config"]
    assert _parse(config)["esx-vcenter1"]["rhsm_password"] == "CHANGE-ME"
    assert f"sam_{token.prefix}_" in config and 'id="token-reused"' in response.content.decode()
    # A token's name cannot add an option to the file.
    odd, _ = orgs.create_token(org, "lab\nrhsm_username=admin", "reporter")
    config = client.post(url("orgs:setup", org), dict(ESX, token=str(odd.pk))).context["config"]
    assert _parse(config)["esx-vcenter1"]["rhsm_username"] == "virt-who"
    assert not any(line.startswith("rhsm_username=admin") for line in config.splitlines())
    # A revoked (or another org's) token cannot be chosen.
    bad = client.post(url("orgs:setup", org), dict(ESX, token=str(revoked.pk)))
    assert bad.status_code == 400 and "token" in bad.context["form"].errors
    assert client.post(url("orgs:setup", org), dict(ESX, expires_days="0")).status_code == 400
