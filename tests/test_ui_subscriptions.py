"""Web UI page 5 (issue 5): subscriptions, pools, products and the bulk import.

Every page and action goes through the fixed actors (org admin, org viewer, another org's
admin, anonymous); list pages keep a constant number of queries whatever their size; writes
change the database through the services (pools generated, quantities followed, all-or-nothing
import).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from orgs.models import Organization
from orgs.services import create_org
from subscriptions import services as subs
from subscriptions.forms import DATETIME_FORMAT
from subscriptions.models import Entitlement, Pool, Product, Subscription
from tests.api_actors import make_actors
from tests.scenario import acme, guest, report, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

ACTORS = ["admin", "viewer", "other_admin", "anonymous"]
READ = {"admin": 200, "viewer": 200, "other_admin": 404, "anonymous": 302}
ADMIN_ONLY = {"admin": 200, "viewer": 403, "other_admin": 404, "anonymous": 302}
WRITE = {"viewer": 403, "other_admin": 404, "anonymous": 302}  # admin: checked per flow
USERS = {"admin": "org-admin", "viewer": "org-viewer", "other_admin": "other-admin"}


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _pool(sub: Subscription, type: str = "NORMAL") -> Pool:
    return Pool.objects.get(subscription=sub, type=type)


@pytest.fixture
def world():
    """ACME with VDC x2 (attached to esx1, whose guest g1 draws from the derived pool) and
    RHEL-4G x1; OTHER has a subscription of its own that must never show up in ACME's pages."""
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    vdc = subscribe(org, "VDC", 2)
    rhel = subscribe(org, "RHEL-4G", 1)
    esx = report(org, "esx1", ["g1"])
    subs.attach(org, esx.uuid, _pool(vdc).uuid)
    g1 = guest(org, "g1")
    make_actors(org)
    other = Organization.objects.get(key="OTHER")  # created by make_actors
    subs.create_product(other, "SECRET-SKU", "Secret product of another org")
    secret = subs.create_subscription(other, "SECRET-SKU", 7)
    clients = {}
    for actor, username in USERS.items():
        client = Client()
        client.force_login(get_user_model().objects.get(username=username))
        clients[actor] = client
    clients["anonymous"] = Client()
    return {"org": org, "vdc": vdc, "rhel": rhel, "esx": esx, "g1": g1, "other": other,
            "secret": secret, "clients": clients}


def _url(name: str, org, **kwargs) -> str:
    return reverse(f"subscriptions:{name}", kwargs={"org_key": org.key, **kwargs})


def _check_status(response, expected: int) -> None:
    assert response.status_code == expected, (response.status_code, expected)
    if expected == 302:
        assert response["Location"].startswith("/accounts/login/")


# --- Every page with every actor --------------------------------------------------------------

def _read_pages(w) -> dict[str, str]:
    org, vdc = w["org"], w["vdc"]
    derived = Pool.objects.get(subscription=vdc, type="ENTITLEMENT_DERIVED")
    return {
        "subscription_list": _url("subscription_list", org),
        "subscription_detail": _url("subscription_detail", org, uuid=vdc.uuid),
        "pool_list": _url("pool_list", org),
        "pool_list_filtered": _url("pool_list", org) + "?type=NORMAL&product=VDC",
        "pool_detail": _url("pool_detail", org, uuid=_pool(vdc).uuid),
        "derived_pool_detail": _url("pool_detail", org, uuid=derived.uuid),
        "product_list": _url("product_list", org),
    }


def _admin_pages(w) -> dict[str, str]:
    org, vdc = w["org"], w["vdc"]
    return {
        "subscription_create": _url("subscription_create", org),
        "subscription_edit": _url("subscription_edit", org, uuid=vdc.uuid),
        "subscription_delete": _url("subscription_delete", org, uuid=vdc.uuid),
        "import": _url("import", org),
    }


def test_read_pages_for_every_actor(world):
    for page, url in _read_pages(world).items():
        for actor in ACTORS:
            response = world["clients"][actor].get(url)
            assert response.status_code == READ[actor], (page, actor, response.status_code)
            _check_status(response, READ[actor])
            if actor == "admin":
                body = response.content.decode()
                assert "SECRET-SKU" not in body, page
                assert "Secret product" not in body, page


def test_admin_pages_for_every_actor(world):
    for page, url in _admin_pages(world).items():
        for actor in ACTORS:
            response = world["clients"][actor].get(url)
            assert response.status_code == ADMIN_ONLY[actor], (page, actor, response.status_code)
            _check_status(response, ADMIN_ONLY[actor])


def test_writes_refused_for_viewer_stranger_and_anonymous(world):
    org, vdc = world["org"], world["vdc"]
    csv = SimpleUploadedFile("subs.csv", b"record,sku,name\nproduct,NEWP,New product\n", "text/csv")
    posts = {
        "create": (_url("subscription_create", org), {"product": Product.objects.get(org=org, sku="VDC").pk,
                                                      "quantity": 5}),
        "edit": (_url("subscription_edit", org, uuid=vdc.uuid),
                 {"quantity": 9, "start": "2025-01-01T00:00", "end": "2035-01-01T00:00"}),
        "delete": (_url("subscription_delete", org, uuid=vdc.uuid), {}),
        "import": (_url("import", org), {"file": csv}),
    }
    before = (Subscription.objects.count(), Product.objects.count(), Pool.objects.count())
    for action, (url, data) in posts.items():
        for actor, expected in WRITE.items():
            if "file" in data:
                data["file"].seek(0)
            response = world["clients"][actor].post(url, data)
            assert response.status_code == expected, (action, actor, response.status_code)
            _check_status(response, expected)
    assert (Subscription.objects.count(), Product.objects.count(), Pool.objects.count()) == before
    vdc.refresh_from_db()
    assert vdc.quantity == 2


def test_another_orgs_objects_are_404(world):
    org, secret, client = world["org"], world["secret"], world["clients"]["admin"]
    secret_pool = _pool(secret)
    for url in (_url("subscription_detail", org, uuid=secret.uuid),
                _url("subscription_edit", org, uuid=secret.uuid),
                _url("subscription_delete", org, uuid=secret.uuid),
                _url("pool_detail", org, uuid=secret_pool.uuid)):
        assert client.get(url).status_code == 404, url
    assert client.post(_url("subscription_delete", org, uuid=secret.uuid)).status_code == 404
    assert Subscription.objects.filter(pk=secret.pk).exists()


def test_csrf_is_required_for_posts(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.get(username="org-admin"))
    org, vdc = world["org"], world["vdc"]
    response = client.post(_url("subscription_delete", org, uuid=vdc.uuid))
    assert response.status_code == 403
    assert Subscription.objects.filter(pk=vdc.pk).exists()
    page = client.get(_url("subscription_delete", org, uuid=vdc.uuid)).content.decode()
    assert "csrfmiddlewaretoken" in page


# --- Page contents ----------------------------------------------------------------------------

def test_subscription_list_shows_consumption_expiry_and_derived_pools(world):
    org = world["org"]
    soon = subs.create_subscription(org, "RHEL-4G", 3, timezone.now() - timedelta(days=10),
                                    timezone.now() + timedelta(days=12), contract_number="C-SOON")
    response = world["clients"]["viewer"].get(_url("subscription_list", org))
    body = response.content.decode()
    rows = {s.uuid: s for s in response.context["subscriptions"]}
    vdc = rows[world["vdc"].uuid]
    assert vdc.normal_pool.consumed == 1 and vdc.derived_pool_count == 1
    assert not vdc.expires_soon
    assert rows[soon.uuid].expires_soon
    assert "expires in 12 days" in body or "expires in 11 days" in body
    assert "C-SOON" in body
    # Viewers get no write links.
    assert _url("subscription_create", org) not in body
    admin_body = world["clients"]["admin"].get(_url("subscription_list", org)).content.decode()
    assert _url("subscription_create", org) in admin_body and _url("import", org) in admin_body
    filtered = world["clients"]["viewer"].get(_url("subscription_list", org) + "?product=VDC")
    assert [s.uuid for s in filtered.context["subscriptions"]] == [world["vdc"].uuid]


def test_subscription_detail_shows_pools_derived_pools_and_consumers(world):
    org, vdc, esx, g1 = world["org"], world["vdc"], world["esx"], world["g1"]
    assert Entitlement.objects.filter(system=g1, pool__requires_host=esx).exists()
    response = world["clients"]["viewer"].get(_url("subscription_detail", org, uuid=vdc.uuid))
    body = response.content.decode()
    assert "NORMAL" in body
    assert "esx1" in body  # consumer of the NORMAL pool, and host of the derived pool
    derived = list(response.context["derived_page"])
    assert len(derived) == 1 and derived[0].requires_host_id == esx.pk
    assert derived[0].consumed == 1 and derived[0].consumer_count == 1
    assert _url("pool_detail", org, uuid=derived[0].uuid) in body
    assert "No host is entitled" not in body
    # The RHEL-4G subscription has its UNMAPPED_GUEST pool and no derived pool yet.
    rhel = world["clients"]["viewer"].get(_url("subscription_detail", org, uuid=world["rhel"].uuid))
    rhel_body = rhel.content.decode()
    assert "UNMAPPED_GUEST" in rhel_body and "No host is entitled" in rhel_body
    assert "No system consumes this pool." in rhel_body


def test_pool_list_filters_and_utilisation(world):
    org, client = world["org"], world["clients"]["viewer"]
    response = client.get(_url("pool_list", org))
    pools = list(response.context["pools"])
    assert {p.type for p in pools} == {"NORMAL", "UNMAPPED_GUEST", "ENTITLEMENT_DERIVED"}
    vdc_normal = next(p for p in pools if p.type == "NORMAL" and p.product.sku == "VDC")
    assert vdc_normal.utilisation == 50  # 1 of 2
    derived = next(p for p in pools if p.type == "ENTITLEMENT_DERIVED")
    assert derived.utilisation is None  # unlimited guests
    only = client.get(_url("pool_list", org) + "?type=UNMAPPED_GUEST")
    assert {p.type for p in only.context["pools"]} == {"UNMAPPED_GUEST"}
    by_product = client.get(_url("pool_list", org) + "?product=RHEL-4G")
    assert {p.product.sku for p in by_product.context["pools"]} == {"RHEL-4G"}
    none = client.get(_url("pool_list", org) + "?type=BONUS")
    assert "No pool matches these filters." in none.content.decode()


def test_pool_detail_lists_consumers(world):
    org, vdc, client = world["org"], world["vdc"], world["clients"]["viewer"]
    body = client.get(_url("pool_detail", org, uuid=_pool(vdc).uuid)).content.decode()
    assert "Who consumes (1)" in body and "esx1" in body
    derived = Pool.objects.get(subscription=vdc, type="ENTITLEMENT_DERIVED")
    body = client.get(_url("pool_detail", org, uuid=derived.uuid)).content.decode()
    assert "Who consumes (1)" in body and "g1" in body and "Only for guests of" in body


def test_product_list_shows_attributes_provided_and_derived(world):
    org, client = world["org"], world["clients"]["viewer"]
    response = client.get(_url("product_list", org))
    body = response.content.decode()
    assert "virt_limit=unlimited" in body and "RHEL-G" in body and "479" in body
    vdc = next(p for p in response.context["products"] if p.sku == "VDC")
    assert vdc.derived_product.sku == "RHEL-G" and vdc.subscription_count == 1
    searched = client.get(_url("product_list", org) + "?q=datacenter")
    assert {p.sku for p in searched.context["products"]} == {"VDC", "RHEL-G"}


def test_empty_states():
    org = create_org("EMPTY", "Empty org")
    make_actors(org)
    client = Client()
    client.force_login(get_user_model().objects.get(username="org-admin"))
    assert "No subscriptions yet." in client.get(_url("subscription_list", org)).content.decode()
    assert "No pools yet" in client.get(_url("pool_list", org)).content.decode()
    assert "No products yet." in client.get(_url("product_list", org)).content.decode()
    assert "no products yet" in client.get(_url("subscription_create", org)).content.decode()


# --- Create / edit / delete through the services ----------------------------------------------

def test_create_subscription_creates_pools(world):
    org, client = world["org"], world["clients"]["admin"]
    product = Product.objects.get(org=org, sku="RHEL-4G")
    response = client.post(_url("subscription_create", org), {
        "product": product.pk, "quantity": 7, "start": "2025-01-01T00:00", "end": "2035-01-01T00:00",
        "contract_number": "C-UI-1"})
    sub = Subscription.objects.get(org=org, contract_number="C-UI-1")
    assert response.status_code == 302
    assert response["Location"] == _url("subscription_detail", org, uuid=sub.uuid)
    assert sub.quantity == 7 and sub.product == product
    assert _pool(sub).quantity == 7
    assert _pool(sub, "UNMAPPED_GUEST").quantity == 28  # virt_limit 4 x 7
    follow = client.get(response["Location"])
    assert "created" in follow.content.decode()


def test_create_subscription_shows_service_errors(world):
    org, client = world["org"], world["clients"]["admin"]
    product = Product.objects.get(org=org, sku="RHEL-4G")
    before = Subscription.objects.count()
    response = client.post(_url("subscription_create", org), {"product": product.pk, "quantity": 0})
    assert response.status_code == 400
    assert "quantity must be between 1 and" in response.content.decode()
    response = client.post(_url("subscription_create", org), {
        "product": product.pk, "quantity": 1, "end": "2020-01-01T00:00"})
    assert "end must be after start." in response.content.decode()
    # Another org's product cannot be chosen.
    secret = Product.objects.get(sku="SECRET-SKU")
    response = client.post(_url("subscription_create", org), {"product": secret.pk, "quantity": 1})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert Subscription.objects.count() == before


def test_edit_subscription_changes_quantity_and_pools(world):
    org, vdc, client = world["org"], world["vdc"], world["clients"]["admin"]
    page = client.get(_url("subscription_edit", org, uuid=vdc.uuid))
    assert page.context["form"].initial["quantity"] == 2
    response = client.post(_url("subscription_edit", org, uuid=vdc.uuid), {
        "quantity": 5, "start": "2025-01-01T00:00", "end": "2036-06-30T12:00"})
    assert response.status_code == 302
    vdc.refresh_from_db()
    assert vdc.quantity == 5 and vdc.end.year == 2036
    assert _pool(vdc).quantity == 5 and _pool(vdc).end == vdc.end
    body = client.get(_url("subscription_detail", org, uuid=vdc.uuid)).content.decode()
    assert "of 5" in body
    # Saving the form as shown changes nothing but what was edited.
    rhel = world["rhel"]
    form = client.get(_url("subscription_edit", org, uuid=rhel.uuid)).context["form"]
    shown = {name: form[name].value().strftime(DATETIME_FORMAT) for name in ("start", "end")}
    response = client.post(_url("subscription_edit", org, uuid=rhel.uuid), {"quantity": 2, **shown})
    assert response.status_code == 302
    start, end = rhel.start, rhel.end
    rhel.refresh_from_db()
    assert (rhel.quantity, rhel.start, rhel.end) == (2, start, end)
    bad = client.post(_url("subscription_edit", org, uuid=vdc.uuid), {
        "quantity": 5, "start": "2030-01-01T00:00", "end": "2029-01-01T00:00"})
    assert bad.status_code == 400 and "end must be after start." in bad.content.decode()
    vdc.refresh_from_db()
    assert vdc.end.year == 2036


def test_delete_subscription_revokes_and_removes_pools(world):
    org, vdc, client = world["org"], world["vdc"], world["clients"]["admin"]
    page = client.get(_url("subscription_delete", org, uuid=vdc.uuid)).content.decode()
    assert "2 entitlements of 2 systems" in page and "1 derived pool" in page
    response = client.post(_url("subscription_delete", org, uuid=vdc.uuid))
    assert response.status_code == 302
    assert response["Location"] == _url("subscription_list", org)
    assert not Subscription.objects.filter(pk=vdc.pk).exists()
    assert not Pool.objects.filter(subscription_id=vdc.pk).exists()
    assert not Entitlement.objects.filter(system=world["esx"], pool__subscription_id=vdc.pk).exists()


# --- Bulk import ------------------------------------------------------------------------------

GOOD_CSV = (
    "record,sku,name,attributes,provided,derived,product,quantity,start,end,contract_number\n"
    "product,UI-479,Engineering product,,,,,,,,\n"
    "product,UI-4G,RHEL with 4 guests,virt_limit=4,UI-479,,,,,,\n"
    "subscription,,,,,,UI-4G,3,2025-01-01,2035-01-01,C-UI-IMPORT\n"
)
BAD_CSV = GOOD_CSV + "subscription,,,,,,NOPE,-5,2025-01-01,2035-01-01,C-UI-BAD\n"


def _upload(client, org, content: str, dry_run: bool = False):
    data = {"file": SimpleUploadedFile("subs.csv", content.encode(), "text/csv")}
    if dry_run:
        data["dry_run"] = "on"
    return client.post(_url("import", org), data)


def test_import_page_form(world):
    body = world["clients"]["admin"].get(_url("import", world["org"])).content.decode()
    assert '<label for="id_file">File</label>' in body
    assert 'type="checkbox" name="dry_run"' in body and 'enctype="multipart/form-data"' in body


def test_import_valid_csv(world):
    org, client = world["org"], world["clients"]["admin"]
    dry = _upload(client, org, GOOD_CSV, dry_run=True)
    assert dry.status_code == 200 and dry.context["result"]["dry_run"] is True
    assert dry.context["result"]["products"]["created"] == 2
    assert not Product.objects.filter(org=org, sku="UI-4G").exists()
    response = _upload(client, org, GOOD_CSV)
    assert response.status_code == 200
    result = response.context["result"]
    assert result["products"] == {"created": 2, "updated": 0, "unchanged": 0}
    assert result["subscriptions"] == {"created": 1, "updated": 0, "unchanged": 0}
    assert "Imported" in response.content.decode()
    sub = Subscription.objects.get(org=org, contract_number="C-UI-IMPORT")
    assert _pool(sub).quantity == 3 and _pool(sub, "UNMAPPED_GUEST").quantity == 12
    again = _upload(client, org, GOOD_CSV)
    assert again.context["result"]["subscriptions"]["unchanged"] == 1


def test_import_with_one_bad_row_applies_nothing(world):
    org, client = world["org"], world["clients"]["admin"]
    before = (Subscription.objects.count(), Product.objects.count())
    response = _upload(client, org, BAD_CSV)
    assert response.status_code == 400
    body = response.content.decode()
    assert "Nothing was imported" in body and "C-UI-BAD" in body
    rows = response.context["error"].rows
    assert [r["row"] for r in rows] == [5]
    assert '<td class="num">5' in body
    assert "quantity" in body
    assert (Subscription.objects.count(), Product.objects.count()) == before
    unreadable = _upload(client, org, "not,a,known\nheader,x,y\n")
    assert unreadable.status_code == 400 and "Nothing was imported" in unreadable.content.decode()


# --- Query budgets ----------------------------------------------------------------------------

def _populate(org, start: int, stop: int) -> None:
    for i in range(start, stop):
        subs.create_product(org, f"Q{i:03}", f"Product {i}", attributes={"virt_limit": "2"}, provided=["479"])
        subs.create_subscription(org, f"Q{i:03}", 1 + i, contract_number=f"C-Q{i}")


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_list_pages_have_a_constant_query_count():
    org = acme()
    make_actors(org)
    client = Client()
    client.force_login(get_user_model().objects.get(username="org-admin"))
    esx = report(org, "esx-q", [])
    urls = [_url("subscription_list", org), _url("pool_list", org), _url("product_list", org)]
    _populate(org, 0, 5)
    _queries(client, urls[0])  # warm the process-wide caches (content types)
    small = [_queries(client, url) for url in urls]
    _populate(org, 5, 40)
    # A few derived pools too (hosts on the pool list), and a second page.
    for sub in Subscription.objects.filter(org=org)[:3]:
        subs.attach(org, esx.uuid, _pool(sub).uuid)
    large = [_queries(client, url) for url in urls]
    assert small == large, (small, large)
    assert all(n <= 12 for n in large), large
    assert _queries(client, urls[1] + "?page=2") == large[1]


def test_detail_pages_have_a_constant_query_count():
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    make_actors(org)
    client = Client()
    client.force_login(get_user_model().objects.get(username="org-admin"))
    vdc = subscribe(org, "VDC", -1)
    pool = _pool(vdc)

    def entitle(start: int, stop: int) -> None:
        for i in range(start, stop):
            host = report(org, f"esx-{i:03}", [f"guest-{i:03}"])
            subs.attach(org, host.uuid, pool.uuid)
            guest(org, f"guest-{i:03}")

    urls = [_url("subscription_detail", org, uuid=vdc.uuid), _url("pool_detail", org, uuid=pool.uuid)]
    entitle(0, 5)
    _queries(client, urls[0])  # warm the process-wide caches
    small = [_queries(client, url) for url in urls]
    entitle(5, 60)
    large = [_queries(client, url) for url in urls]
    assert small == large, (small, large)
    response = client.get(urls[0])
    assert len(response.context["derived_page"].object_list) == 50
    assert response.context["derived_page"].paginator.count == 60
    assert all(p.consumer_count == 1 for p in response.context["derived_page"])
    assert "Showing the first 20 of 60 entitlements" in response.content.decode()
    assert len(client.get(urls[1]).context["consumers"].object_list) == 50
