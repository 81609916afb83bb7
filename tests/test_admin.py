"""The operator admin: every page loads, and what it changes goes through the services."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from hypervisors.models import GuestHostInterval, GuestId
from orgs.models import Organization, OrganizationGroupPermission, OrganizationUserPermission, System
from orgs.services import set_member_role, update_org
from subscriptions.models import Entitlement, EntitlementEvent, Pool, Product, Subscription
from tests.factories import SystemFactory
from tests.scenario import acme, ents, guest, reload, report, status, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

ALL_MODELS = (Organization, OrganizationUserPermission, OrganizationGroupPermission, System, Product,
              Subscription, Pool, Entitlement, EntitlementEvent, GuestId, GuestHostInterval)


def url(model, view: str = "changelist", *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def split(moment) -> dict:
    local = timezone.localtime(moment)
    return {"0": local.strftime("%Y-%m-%d"), "1": local.strftime("%H:%M:%S")}


def datetime_fields(**values) -> dict:
    return {f"{name}_{i}": part for name, moment in values.items() for i, part in split(moment).items()}


class _FormData(HTMLParser):
    """The fields a browser would post back from a rendered admin form."""

    def __init__(self, html: str):
        super().__init__()
        self.data: dict[str, list[str]] = {}
        self._select = self._textarea = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.data.setdefault(name, []).append(a.get("value") or ("on" if "checked" in a else ""))
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.data.setdefault(self._select, []).append(a.get("value", ""))
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = [""]

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea][0] += data


def rendered_form(client, page: str) -> dict[str, list[str]]:
    form = _FormData(client.get(page).content.decode()).data
    form.pop("csrfmiddlewaretoken", None)
    return form


@pytest.fixture
def s1():
    """domain.md S1: VDC x2, esx1 reports g1 and g2, g1 registered and covered by inheritance."""
    org = acme()
    subscribe(org, "VDC", 2)
    esx1 = report(org, "esx1", ["g1", "g2"])
    g1 = guest(org, "g1")
    assert status(g1) == "valid"
    return org, esx1, g1


def test_every_changelist_and_change_page_loads(admin_client, s1):
    org, _, _ = s1
    set_member_role(org, "viewer1", "viewer")
    assign_perm("view_org", Group.objects.create(name="ops"), org)
    for model in ALL_MODELS:
        assert admin_client.get(url(model)).status_code == 200, model
        obj = model.objects.first()
        assert obj is not None, model
        assert admin_client.get(url(model, "change", obj.pk)).status_code == 200, model
    for model in (Organization, Product, Subscription):
        assert admin_client.get(url(model, "add")).status_code == 200, model


def test_related_links_filter_the_changelists(admin_client, s1):
    org, esx1, g1 = s1
    (derived,) = Pool.objects.filter(requires_host=esx1)
    subscription = derived.subscription
    links = [(url(System, "change", esx1.pk), url(System), f"current_host__id__exact={esx1.pk}", {g1.pk}),
             (url(System, "change", esx1.pk), url(GuestId), f"host__id__exact={esx1.pk}",
              set(GuestId.objects.values_list("pk", flat=True))),
             (url(System, "change", g1.pk), url(Entitlement), f"system__id__exact={g1.pk}",
              {e.pk for e in ents(g1)}),
             (url(Pool, "change", derived.pk), url(Entitlement), f"pool__id__exact={derived.pk}",
              {e.pk for e in ents(g1)}),
             (url(Subscription, "change", subscription.pk), url(Pool),
              f"subscription__id__exact={subscription.pk}", {p.pk for p in subscription.pools.all()}),
             (url(Organization, "change", org.pk), url(System), f"org__id__exact={org.pk}", {esx1.pk, g1.pk})]
    for page, changelist, query, expected in links:
        assert f"{changelist}?{query}" in admin_client.get(page).content.decode(), query
        response = admin_client.get(f"{changelist}?{query}")
        assert response.status_code == 200, query  # an unknown lookup would redirect to ?e=1
        assert {o.pk for o in response.context["cl"].result_list} == expected, query


def test_search_systems_by_name_and_uuid(admin_client, s1):
    _, esx1, g1 = s1
    found = admin_client.get(url(System), {"q": "esx"}).context["cl"].result_list
    assert [s.name for s in found] == ["esx1"]
    found = admin_client.get(url(System), {"q": str(g1.uuid).upper()}).context["cl"].result_list
    assert [s.name for s in found] == ["g1"]


def test_system_page_shows_entitlements_coverage_host_and_guests(admin_client, s1):
    _, esx1, g1 = s1
    page = admin_client.get(url(System, "change", g1.pk)).content.decode()
    assert "ENTITLEMENT_DERIVED RHEL-G" in page  # the entitlement inline
    assert "<strong>valid</strong>" in page  # compliance
    assert "covered through host esx1" in page  # explanation
    assert url(System, "change", esx1.pk) in page  # current host link
    host_page = admin_client.get(url(System, "change", esx1.pk)).content.decode()
    assert "NORMAL VDC" in host_page and "g2" in host_page  # its entitlement and reported guests


def test_re_resolve_action_covers_a_system(admin_client):
    org = acme()
    update_org(org, autobind_enabled=False)
    subscribe(org, "VDC", 1)
    report(org, "esx1", ["g1"])
    g1 = guest(org, "g1")
    assert status(g1) == "invalid"
    update_org(org, autobind_enabled=True)  # triggers nothing by itself
    response = admin_client.post(url(System), {"action": "re_resolve", "_selected_action": [g1.pk]},
                                 follow=True)
    assert response.status_code == 200
    assert "Re-resolution queued for 1 system(s)." in messages_of(response)
    assert status(g1) == "valid"


def test_heal_all_systems_action(admin_client, s1):
    org, _, _ = s1
    response = admin_client.post(url(Organization), {"action": "heal_all_systems",
                                                     "_selected_action": [org.pk]}, follow=True)
    assert "Resolution queued for 2 system(s) in 1 organization(s)." in messages_of(response)


def test_remove_member_action_removes_every_role_permission(admin_client, s1):
    org, _, _ = s1
    set_member_role(org, "admin1", "admin")
    row = OrganizationUserPermission.objects.filter(user__username="admin1").first()
    response = admin_client.post(url(OrganizationUserPermission), {
        "action": "remove_members", "_selected_action": [row.pk]}, follow=True)
    assert "Removed 1 membership(s)." in messages_of(response)
    assert not OrganizationUserPermission.objects.filter(user__username="admin1").exists()


def test_event_log_pools_and_entitlements_are_read_only(admin_client, s1):
    for model in (EntitlementEvent, Pool, Entitlement):
        obj = model.objects.first()
        assert admin_client.get(url(model, "add")).status_code == 403, model
        assert admin_client.post(url(model, "change", obj.pk), {}).status_code == 403, model
        assert admin_client.get(url(model, "delete", obj.pk)).status_code == 403, model
        assert admin_client.get(url(model, "change", obj.pk)).status_code == 200, model  # view only
    event = EntitlementEvent.objects.first()
    newest = admin_client.get(url(EntitlementEvent)).context["cl"].result_list[0]
    assert newest.created >= event.created


def test_add_subscription_creates_its_pools(admin_client):
    org = acme()
    now = timezone.now()
    form = {"org": org.pk, "product": Product.objects.get(sku="RHEL-4G").pk, "derived_product": "",
            "quantity": "2", "contract_number": "C-1", "account_number": "", "order_number": "",
            **datetime_fields(start=now - timedelta(days=1), end=now + timedelta(days=365))}
    other = Organization.objects.create(key="other", name="Other")
    foreign = Product.objects.create(org=other, sku="X", name="X")
    refused = admin_client.post(url(Subscription, "add"), {**form, "product": foreign.pk, "quantity": "0"})
    assert refused.status_code == 200
    assert set(refused.context["adminform"].form.errors) == {"product", "quantity"}

    assert admin_client.post(url(Subscription, "add"), form).status_code == 302
    subscription = Subscription.objects.get(contract_number="C-1")
    pools = {p.type: p.quantity for p in subscription.pools.all()}
    assert pools == {Pool.Type.NORMAL: 2, Pool.Type.UNMAPPED_GUEST: 8}


def test_change_and_delete_subscription_go_through_the_services(admin_client, s1):
    _, _, g1 = s1
    subscription = Subscription.objects.get(product__sku="VDC")
    form = {"quantity": "1", **datetime_fields(start=subscription.start, end=subscription.end),
            "pools-TOTAL_FORMS": "0", "pools-INITIAL_FORMS": "0"}
    assert admin_client.post(url(Subscription, "change", subscription.pk), form).status_code == 302
    assert subscription.pools.get(type=Pool.Type.NORMAL).quantity == 1

    confirm = admin_client.get(url(Subscription, "delete", subscription.pk))
    assert confirm.status_code == 200 and not confirm.context["perms_lacking"]
    assert admin_client.post(url(Subscription, "delete", subscription.pk), {"post": "yes"}).status_code == 302
    assert not Pool.objects.exists()
    assert ents(g1) == []
    assert EntitlementEvent.objects.filter(reason="subscription_deleted").exists()


def test_delete_host_removes_its_derived_pool(admin_client, s1):
    _, esx1, g1 = s1
    assert Pool.objects.filter(requires_host=esx1).exists()
    confirm = admin_client.get(url(System, "delete", esx1.pk))
    assert confirm.status_code == 200 and not confirm.context["perms_lacking"]
    response = admin_client.post(url(System), {"action": "delete_selected", "_selected_action": [esx1.pk],
                                               "post": "yes"})
    assert response.status_code == 302
    assert not System.objects.filter(pk=esx1.pk).exists()
    assert not Pool.objects.filter(type=Pool.Type.ENTITLEMENT_DERIVED).exists()
    assert EntitlementEvent.objects.filter(reason="source_revoked", system_name="g1").exists()
    assert reload(g1).current_host is None


def test_rendered_change_forms_post_back_unchanged(admin_client, s1):
    """What a browser sends back (inline management forms, read-only inlines) saves cleanly."""
    org, esx1, g1 = s1
    before = (sorted(Entitlement.objects.values_list("pk", flat=True)),
              sorted(Pool.objects.values_list("pk", "quantity", "consumed")))
    subscription = Subscription.objects.get(product__sku="VDC")
    for model, pk in ((System, esx1.pk), (System, g1.pk), (Subscription, subscription.pk),
                      (Product, Product.objects.get(sku="VDC").pk), (Organization, org.pk)):
        page = url(model, "change", pk)
        response = admin_client.post(page, rendered_form(admin_client, page))
        assert response.status_code == 302, (model, response.context and response.context["errors"])
    assert (sorted(Entitlement.objects.values_list("pk", flat=True)),
            sorted(Pool.objects.values_list("pk", "quantity", "consumed"))) == before


def test_change_system_name_and_autoheal(admin_client, s1):
    _, _, g1 = s1
    form = {"name": "g1-renamed", "entitlements-TOTAL_FORMS": "0", "entitlements-INITIAL_FORMS": "0",
            "guest_ids-TOTAL_FORMS": "0", "guest_ids-INITIAL_FORMS": "0"}
    assert admin_client.post(url(System, "change", g1.pk), form).status_code == 302
    g1 = reload(g1)
    assert (g1.name, g1.autoheal) == ("g1-renamed", False)
    assert len(ents(g1)) == 1  # nothing else changed


def test_add_product_validates_attributes(admin_client):
    org = acme()
    base = {"org": org.pk, "sku": "RHEL-2G", "name": "RHEL with 2 guests", "derived_product": "",
            "provided_products": [Product.objects.get(sku="479").pk]}
    refused = admin_client.post(url(Product, "add"), {**base, "attributes": '{"virt_limit": "0"}'})
    assert "attributes" in refused.context["adminform"].form.errors
    response = admin_client.post(url(Product, "add"), {**base, "attributes": '{"virt_limit": 2}'})
    assert response.status_code == 302
    product = Product.objects.get(sku="RHEL-2G")
    assert product.attributes == {"virt_limit": "2"}
    assert [p.sku for p in product.provided_products.all()] == ["479"]


def test_add_organization_validates_key(admin_client):
    form = {"name": "Beta", "content_access_mode": "entitlement", "autobind_enabled": "on",
            "hypervisor_autobind_enabled": "on", "unmapped_window": "1 00:00:00",
            "unmapped_lifetime": "7 00:00:00"}
    refused = admin_client.post(url(Organization, "add"), {**form, "key": "-beta"})
    assert "key" in refused.context["adminform"].form.errors
    assert admin_client.post(url(Organization, "add"), {**form, "key": "beta"}).status_code == 302
    assert Organization.objects.get(key="beta").unmapped_window == timedelta(days=1)


def test_system_changelist_has_no_n_plus_one(admin_client, django_assert_max_num_queries):
    org = acme()
    host = report(org, "esx1", [])
    SystemFactory.create_batch(30, org=org, current_host=host, is_guest=True)
    with django_assert_max_num_queries(10):
        response = admin_client.get(url(System))
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 31
