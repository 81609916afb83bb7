"""Web UI: hypervisor, system and report pages (issue 5, pages 3, 4 and 6) with the fixed actors."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from hypervisors import reports
from hypervisors.models import Report
from orgs import services as orgs
from orgs.models import Organization, System
from subscriptions.models import Entitlement, Pool
from tests.factories import SystemFactory
from tests.scenario import acme, guest, physical, report, status, subscribe

# Registration, reports and attach enqueue resolution on commit (run eagerly in tests).
pytestmark = pytest.mark.django_db(transaction=True)

ACTORS = ("admin", "viewer", "other_admin", "anonymous")
READ = {"admin": 200, "viewer": 200, "other_admin": 404, "anonymous": 302}
WRITE = {"viewer": 403, "other_admin": 404, "anonymous": 302}


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def clients_for(org: Organization) -> dict[str, Client]:
    other = Organization.objects.filter(key="OTHER").first() or orgs.create_org("OTHER", "Other")
    users = {
        "admin": orgs.set_member_role(org, "ui-admin", "admin"),
        "viewer": orgs.set_member_role(org, "ui-viewer", "viewer"),
        "other_admin": orgs.set_member_role(other, "ui-other-admin", "admin"),
    }
    clients = {}
    for name, user in users.items():
        clients[name] = Client()
        clients[name].force_login(user)
    clients["anonymous"] = Client()
    return clients


def checkin(org, mapping: dict[str, list[str]], reporter_id: str = "vw1") -> Report:
    body = {"hypervisors": [{"hypervisorId": {"hypervisorId": host}, "name": host,
                             "guestIds": [{"guestId": g} for g in guests]}
                            for host, guests in mapping.items()]}
    created = reports.accept_checkin(org, json.dumps(body).encode(), reporter_id=reporter_id)
    return Report.objects.get(pk=created.pk)


def url(name: str, org: Organization, *args) -> str:
    return reverse(f"hypervisors:{name}", args=[org.key, *args])


def check(clients, method: str, path: str, expected: dict[str, int], data=None) -> dict:
    responses = {}
    for actor, code in expected.items():
        response = getattr(clients[actor], method)(path, data or {})
        assert response.status_code == code, (actor, method, path, response.status_code)
        if code == 302 and actor == "anonymous":
            assert response["Location"].startswith("/accounts/login/")
        responses[actor] = response
    return responses


@pytest.fixture
def world():
    """ACME, hypervisor auto-attach off, VDC ×1; esx1 reports g1 (registered) and g2 (only
    reported); web1 is a physical system."""
    org = acme()
    org.hypervisor_autobind_enabled = False
    org.save()
    subscribe(org, "VDC", 1)
    rep = checkin(org, {"esx1": ["g1", "g2"]})
    g1 = guest(org, "g1")
    web1 = physical(org, "web1")
    esx1 = System.objects.get(org=org, hypervisor_id="esx1")
    return org, clients_for(org), g1, esx1, web1, rep


def vdc_pool(org) -> Pool:
    return Pool.objects.get(org=org, subscription__product__sku="VDC", type=Pool.Type.NORMAL)


# --- Permission matrix ------------------------------------------------------------------------

def test_read_pages_matrix(world):
    org, clients, g1, esx1, web1, rep = world
    for path in (url("hypervisor_list", org), url("hypervisor_detail", org, esx1.uuid),
                 url("system_list", org), url("system_detail", org, g1.uuid),
                 url("system_detail", org, esx1.uuid), url("report_list", org),
                 url("report_detail", org, rep.uuid)):
        check(clients, "get", path, READ)


def test_attach_preview_is_for_admins(world):
    org, clients, g1, esx1, web1, rep = world
    path = url("hypervisor_attach", org, esx1.uuid) + f"?pool={vdc_pool(org).uuid}"
    check(clients, "get", path, {**WRITE, "admin": 200})


def test_write_actions_matrix(world):
    org, clients, g1, esx1, web1, rep = world
    pool = vdc_pool(org)
    check(clients, "post", url("hypervisor_attach", org, esx1.uuid), WRITE, {"pool": str(pool.uuid)})
    check(clients, "post", url("system_resolve", org, g1.uuid), WRITE)
    assert not Entitlement.objects.filter(system=esx1).exists()
    check(clients, "post", url("hypervisor_attach", org, esx1.uuid), {"admin": 302},
          {"pool": str(pool.uuid)})
    ent = Entitlement.objects.get(system=esx1)
    check(clients, "post", url("hypervisor_remove", org, esx1.uuid, ent.uuid), WRITE)
    assert Entitlement.objects.filter(pk=ent.pk).exists()
    check(clients, "post", url("hypervisor_remove", org, esx1.uuid, ent.uuid), {"admin": 302})
    assert not Entitlement.objects.filter(pk=ent.pk).exists()
    check(clients, "post", url("system_resolve", org, g1.uuid), {"admin": 302})


def test_other_orgs_objects_are_404(world):
    org, clients, g1, esx1, web1, rep = world
    other = Organization.objects.get(key="OTHER")
    stranger = report(other, "esx-other", ["x1"])
    admin = clients["admin"]
    for path in (url("hypervisor_detail", org, stranger.uuid), url("system_detail", org, stranger.uuid),
                 url("hypervisor_detail", org, web1.uuid), url("report_detail", org, g1.uuid)):
        assert admin.get(path).status_code == 404, path
    # An entitlement of another system is not removable through this host.
    subscribe(org, "RHEL-4G", 1)
    ent = Entitlement.objects.exclude(system=esx1).filter(org=org).first()
    assert ent is not None
    assert admin.post(url("hypervisor_remove", org, esx1.uuid, ent.uuid)).status_code == 404
    assert Entitlement.objects.filter(pk=ent.pk).exists()
    names = [h.name for h in admin.get(url("hypervisor_list", org)).context["page"].object_list]
    assert names == ["esx1"]


def test_viewer_sees_no_action_buttons(world):
    org, clients, g1, esx1, web1, rep = world
    page = clients["viewer"].get(url("hypervisor_detail", org, esx1.uuid)).content.decode()
    assert "Attach a subscription" not in page and "Preview" not in page
    page = clients["viewer"].get(url("system_detail", org, g1.uuid)).content.decode()
    assert "Re-resolve now" not in page
    page = clients["admin"].get(url("system_detail", org, g1.uuid)).content.decode()
    assert "Re-resolve now" in page and "csrfmiddlewaretoken" in page


# --- Hypervisors ------------------------------------------------------------------------------

def test_attach_flow_preview_confirm_remove(world):
    org, clients, g1, esx1, web1, rep = world
    admin = clients["admin"]
    assert status(g1) == "invalid"
    detail = admin.get(url("hypervisor_detail", org, esx1.uuid)).content.decode()
    assert '<label for="id_pool">Subscription</label>' in detail
    assert "g1" in detail and "g2" in detail and "only reported" in detail
    assert "not covered" in detail

    pool = vdc_pool(org)
    preview = admin.get(url("hypervisor_attach", org, esx1.uuid), {"pool": str(pool.uuid)})
    assert preview.status_code == 200
    assert [g.name for g in preview.context["covered"]] == ["g1"]
    html = preview.content.decode()
    assert ">Attach</button>" in html and "csrfmiddlewaretoken" in html
    assert not Entitlement.objects.filter(system=esx1).exists()  # nothing until confirmed

    response = admin.post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(pool.uuid)})
    assert response.status_code == 302
    assert response["Location"] == url("hypervisor_detail", org, esx1.uuid)
    assert status(g1) == "valid"
    page = admin.get(response["Location"]).content.decode()
    assert "Attached VDC to esx1" in page and "Remove" in page and "covered" in page

    explanation = admin.get(url("system_detail", org, g1.uuid))
    text = explanation.content.decode()
    assert "esx1" in text and "VDC" in text
    chain = [link["label"] for link in explanation.context["explanations"][0]["links"]]
    assert "esx1" in chain and any(label.startswith("VDC") for label in chain)
    assert url("hypervisor_detail", org, esx1.uuid) in text

    ent = Entitlement.objects.get(system=esx1)
    response = admin.post(url("hypervisor_remove", org, esx1.uuid, ent.uuid))
    assert response.status_code == 302
    assert status(g1) == "invalid"
    assert "Removed VDC from esx1" in admin.get(response["Location"]).content.decode()


def test_attach_refusal_is_a_clear_message(world):
    org, clients, g1, esx1, web1, rep = world
    admin = clients["admin"]
    pool = vdc_pool(org)
    assert admin.post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(pool.uuid)}).status_code == 302
    response = admin.post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(pool.uuid)},
                          follow=True)
    text = response.content.decode()
    assert "Not attached" in text and "already_entitled" in text
    # The preview warns before confirming too.
    preview = admin.get(url("hypervisor_attach", org, esx1.uuid), {"pool": str(pool.uuid)})
    assert "would be refused" in preview.content.decode()
    # An unknown pool is not a choice.
    response = admin.post(url("hypervisor_attach", org, esx1.uuid), {"pool": "nope"}, follow=True)
    assert "Not attached" in response.content.decode()
    assert Entitlement.objects.filter(system=esx1).count() == 1


def test_attach_form_lists_only_current_virt_limit_normal_pools(world):
    org, clients, g1, esx1, web1, rep = world
    subscribe(org, "479", 5)  # no virt_limit: not offered
    form = clients["admin"].get(url("hypervisor_detail", org, esx1.uuid)).context["attach_form"]
    labels = [label for _, label in form.fields["pool"].choices]
    assert len(labels) == 1 and labels[0].startswith("VDC")


def test_hypervisor_list_search_and_filters(world):
    org, clients, g1, esx1, web1, rep = world
    from hypervisors import services as mapping

    mapping.report_hypervisor(org, "esx2", name="esx2", guests=["g9"], reporter_id="vw2",
                              facts={"hypervisor.cluster": "prod", "hypervisor.type": "VMware ESXi"})
    admin = clients["admin"]

    def names(**params):
        response = admin.get(url("hypervisor_list", org), params)
        assert response.status_code == 200
        return [h.name for h in response.context["page"].object_list]

    assert names() == ["esx1", "esx2"]
    assert names(q="ESX2") == ["esx2"]
    assert names(q="esx1") == ["esx1"]
    assert names(cluster="prod") == ["esx2"]
    assert names(hypervisor_type="VMware ESXi") == ["esx2"]
    assert names(reporter_id="vw2") == ["esx2"]
    assert names(subscribed="yes") == []
    assert names(subscribed="no") == ["esx1", "esx2"]
    admin.post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(vdc_pool(org).uuid)})
    assert names(subscribed="yes") == ["esx1"]
    assert names(subscribed="no") == ["esx2"]
    page = admin.get(url("hypervisor_list", org), {"q": "nothing-like-this"}).content.decode()
    assert "No hypervisor matches these filters" in page
    row = admin.get(url("hypervisor_list", org)).context["page"].object_list[0]
    assert (row.guest_count, row.registered_guest_count) == (2, 1)


def test_hypervisor_history_lists_reports(world):
    org, clients, g1, esx1, web1, rep = world
    history = clients["admin"].get(url("hypervisor_detail", org, esx1.uuid)).context["history"]
    assert [r.uuid for r in history] == [rep.uuid]


def test_empty_states(db):
    org = acme()
    clients = clients_for(org)
    admin = clients["admin"]
    assert "No hypervisors yet" in admin.get(url("hypervisor_list", org)).content.decode()
    assert "No systems registered yet" in admin.get(url("system_list", org)).content.decode()
    assert "No reports yet" in admin.get(url("report_list", org)).content.decode()
    host = report(org, "lonely", [])
    page = admin.get(url("hypervisor_detail", org, host.uuid)).content.decode()
    assert "reports no guests" in page and "holds no entitlement" in page
    assert "No current subscription with virtual guests" in page


# --- Query budgets (performance.md P8) --------------------------------------------------------

def _queries(client, path) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(path).status_code == 200
    return len(ctx.captured_queries)


def test_list_pages_run_a_constant_number_of_queries(db):
    org = acme()
    subscribe(org, "VDC", 100)
    clients = clients_for(org)
    admin = clients["admin"]

    def grow(n: int, start: int):
        mapping = {f"hv{i:03d}": [f"gu{i:03d}a", f"gu{i:03d}b"] for i in range(start, n)}
        checkin(org, mapping, reporter_id=f"r{start}")
        for i in range(start, n):
            SystemFactory(org=org, name=f"s{i:03d}", is_guest=True, virt_uuid=f"gu{i:03d}a",
                          installed_products=[{"productId": "479"}])

    grow(5, 0)
    pages = [url("hypervisor_list", org), url("hypervisor_list", org) + "?subscribed=no&q=hv",
             url("system_list", org), url("system_list", org) + "?coverage=uncovered&type=guest",
             url("report_list", org)]
    admin.get(pages[0])  # warm-up: the session's first request costs extra queries
    small = [_queries(admin, p) for p in pages]
    grow(40, 5)
    for i in range(6):
        checkin(org, {f"hv{i:03d}": [f"gu{i:03d}a"]}, reporter_id=f"extra{i}")
    assert System.objects.filter(org=org, hypervisor_id__isnull=False).count() == 40
    assert Report.objects.filter(org=org).count() >= 8
    large = [_queries(admin, p) for p in pages]
    assert small == large
    assert max(large) <= 12


def test_detail_pages_run_a_bounded_number_of_queries(world):
    org, clients, g1, esx1, web1, rep = world
    admin = clients["admin"]
    admin.get(url("hypervisor_detail", org, esx1.uuid))  # warm-up
    first = _queries(admin, url("hypervisor_detail", org, esx1.uuid))
    checkin(org, {"esx1": ["g1", "g2"] + [f"x{i}" for i in range(30)]})
    for i in range(10):
        guest(org, f"x{i}")
    assert _queries(admin, url("hypervisor_detail", org, esx1.uuid)) == first


# --- Systems ----------------------------------------------------------------------------------

def test_system_coverage_and_type_filters(db):
    org = acme()
    subscribe(org, "RHEL-4G", 1)  # unmapped pool for g3; the NORMAL unit goes to esx1
    clients = clients_for(org)
    g3 = guest(org, "g3")  # no host yet: temporary entitlement
    assert status(g3) == "partial"
    checkin(org, {"esx1": ["g1"]})
    g1 = guest(org, "g1")  # inherits through esx1's derived pool (auto-attach on)
    assert status(g1) == "valid"
    lone = guest(org, "g4", registered_at=timezone.now() - timezone.timedelta(days=3))
    subscribe(org, "VDC", 1)
    admin = clients["admin"]

    def names(**params):
        response = admin.get(url("system_list", org), params)
        assert response.status_code == 200
        return sorted(s.name for s in response.context["page"].object_list)

    assert "g1" in names(coverage="covered") and "esx1" in names(coverage="covered")
    assert names(coverage="temporary") == ["g3"]
    assert status(lone) == "invalid"
    assert "g4" in names(coverage="uncovered")
    assert "g1" not in names(coverage="uncovered") and "g3" not in names(coverage="uncovered")
    assert names(type="guest") == ["g1", "g3", "g4"]
    assert names(type="hypervisor") == ["esx1"]
    physical(org, "web1", products=[])
    assert names(type="physical") == ["web1"]
    assert names(q="WEB") == ["web1"]
    page = admin.get(url("system_list", org), {"coverage": "temporary"}).content.decode()
    assert "temporary" in page


def test_system_detail_shows_compliance_explanation_timeline(world):
    org, clients, g1, esx1, web1, rep = world
    admin = clients["admin"]
    response = admin.get(url("system_detail", org, g1.uuid))
    text = response.content.decode()
    assert response.context["compliance"].status == "invalid"
    assert "NOTCOVERED" in text
    # First failing link in plain words, with what to do.
    assert "host esx1 has no subscription with virtual guests" in text
    assert "What to do:" in text and "Attach VDC to host esx1" in text
    # Host timeline from the report.
    assert response.context["timeline"][0].host_name == "esx1"
    assert url("report_detail", org, rep.uuid) in text
    assert "virt.uuid" in text


def test_resolve_now_enqueues_resolution(world, monkeypatch):
    org, clients, g1, esx1, web1, rep = world
    calls = []
    from subscriptions import services as subs

    real = subs.enqueue_resolution
    monkeypatch.setattr(subs, "enqueue_resolution",
                        lambda ids, trigger: calls.append((list(ids), trigger)) or real(ids, trigger))
    response = clients["admin"].post(url("system_resolve", org, g1.uuid), follow=True)
    assert response.status_code == 200
    assert ([g1.id], "manual") in calls
    assert "Re-resolution of g1 requested" in response.content.decode()


# --- Reports ----------------------------------------------------------------------------------

def test_report_detail_shows_moved_guest(world):
    org, clients, g1, esx1, web1, rep = world
    moved = checkin(org, {"esx1": ["g2"], "esx2": ["g1"]}, reporter_id="vw1")
    assert moved.state == Report.State.FINISHED
    response = clients["viewer"].get(url("report_detail", org, moved.uuid))
    text = response.content.decode()
    assert "g1 esx1 → esx2" in text
    assert "esx2" in text  # created
    assert 'id="job-state"' in text and "data-refresh" not in text
    assert "payload" not in text.lower().replace("payload_", "")


def test_report_detail_refreshes_while_running(world):
    org, clients, g1, esx1, web1, rep = world
    Report.objects.filter(pk=rep.pk).update(state=Report.State.RUNNING)
    text = clients["admin"].get(url("report_detail", org, rep.uuid)).content.decode()
    assert 'id="job-state" data-refresh="3"' in text
    assert 'http-equiv="refresh"' not in text


def test_report_list_filters(world):
    org, clients, g1, esx1, web1, rep = world
    checkin(org, {"esx9": []}, reporter_id="vw9")
    Report.objects.filter(reporter_id="vw9").update(state=Report.State.FAILED)
    admin = clients["admin"]

    def reporters(**params):
        response = admin.get(url("report_list", org), params)
        return [r.reporter_id for r in response.context["page"].object_list]

    assert reporters() == ["vw9", "vw1"]
    assert reporters(state="FAILED") == ["vw9"]
    assert reporters(reporter="vw1") == ["vw1"]
    assert "No report matches" in admin.get(url("report_list", org), {"reporter": "zz"}).content.decode()



def test_post_without_csrf_token_is_refused(world):
    org, clients, g1, esx1, web1, rep = world
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(orgs.set_member_role(org, "ui-admin", "admin"))
    response = strict.post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(vdc_pool(org).uuid)})
    assert response.status_code == 403
    assert not Entitlement.objects.filter(system=esx1).exists()


def test_remove_from_system_page(world):
    org, clients, g1, esx1, web1, rep = world
    clients["admin"].post(url("hypervisor_attach", org, esx1.uuid), {"pool": str(vdc_pool(org).uuid)})
    ent = Entitlement.objects.get(system=g1)
    page = clients["admin"].get(url("system_detail", org, g1.uuid)).content.decode()
    assert url("system_remove", org, g1.uuid, ent.uuid) in page
    check(clients, "post", url("system_remove", org, g1.uuid, ent.uuid), WRITE)
    # The guest is re-resolved after the removal and may take the same pool again: only check
    # that the removed entitlement is gone.
    check(clients, "post", url("system_remove", org, g1.uuid, ent.uuid), {"admin": 302})
    assert not Entitlement.objects.filter(pk=ent.pk).exists()


def test_hypervisor_guests_are_paginated(world):
    org, clients, g1, esx1, web1, rep = world
    checkin(org, {"esx1": [f"v{i:03d}" for i in range(120)]})
    admin = clients["admin"]
    first = admin.get(url("hypervisor_detail", org, esx1.uuid))
    assert len(first.context["guests"]) == 100 and "Next guests" in first.content.decode()
    second = admin.get(url("hypervisor_detail", org, esx1.uuid), {"guests": 2})
    assert [g.guest_uuid for g in second.context["guests"]] == [f"v{i:03d}" for i in range(100, 120)]


def test_system_page_registration_identity_clone_and_delete_tombstone(world):
    from hypervisors import services as lifecycle
    from orgs.models import DeletedSystem

    org, clients, g1, esx1, web1, rep = world
    facts = {"dmi.system.uuid": "aaaaaaaa-1111-2222-3333-444444444444"}
    first = lifecycle.register_consumer(org, "rhel-a", facts, [], registered_by="ui-admin")
    clone = lifecycle.register_consumer(org, "rhel-b", facts, [], registered_by="ui-admin")
    text = clients["viewer"].get(url("system_detail", org, clone.uuid)).content.decode()
    assert "subscription-manager (user and password)" in text
    assert str(clone.identity.serial) in text
    assert 'id="clone-warning"' in text and "rhel-a" in text
    assert "delete-system" not in text  # viewers get no delete link
    assert "Registered through</th><td>API" in clients["admin"].get(
        url("system_detail", org, web1.uuid)).content.decode()
    check(clients, "post", url("system_delete", org, first.uuid),
          {"viewer": 403, "other_admin": 404, "anonymous": 302})
    response = clients["admin"].post(url("system_delete", org, first.uuid))
    assert response.status_code == 302
    assert not System.objects.filter(pk=first.pk).exists()
    assert DeletedSystem.objects.get(uuid=first.uuid).deleted_by == "ui-admin"
