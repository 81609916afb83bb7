"""Web UI org pages: settings, members, tokens and the virt-who setup, with the fixed actors
(org admin, org viewer, another org's admin → 404, anonymous → sign-in)."""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from orgs import services as orgs
from orgs.auth import verify
from orgs.models import ApiToken, Organization

PASSWORD = "ui-actor-pass-word-1"


@dataclass
class UiActors:
    org: Organization
    other: Organization
    clients: dict[str, Client]


def make_ui_actors(org: Organization) -> UiActors:
    other = Organization.objects.filter(key="OTHER").first() or orgs.create_org("OTHER", "Other")
    users = {
        "admin": orgs.set_member_role(org, "org-admin", "admin", password=PASSWORD),
        "viewer": orgs.set_member_role(org, "org-viewer", "viewer", password=PASSWORD),
        "other_admin": orgs.set_member_role(other, "other-admin", "admin", password=PASSWORD),
    }
    clients = {}
    for name, user in users.items():
        client = Client()
        client.force_login(user)
        clients[name] = client
    clients["anonymous"] = Client()
    return UiActors(org, other, clients)


@pytest.fixture
def actors(db):
    return make_ui_actors(orgs.create_org("ACME", "ACME Corp"))


def url(name: str, org: Organization, **kwargs) -> str:
    return reverse(name, kwargs={"org_key": org.key, **kwargs})


PAGES = ["orgs:settings", "orgs:members", "orgs:setup", "orgs:register", "orgs:activation_keys"]


@pytest.mark.parametrize("page", PAGES + ["orgs:tokens"])
def test_read_access_by_actor(actors, page):
    target = url(page, actors.org)
    assert actors.clients["admin"].get(target).status_code == 200
    assert actors.clients["viewer"].get(target).status_code == (403 if page == "orgs:tokens" else 200)
    assert actors.clients["other_admin"].get(target).status_code == 404
    anonymous = actors.clients["anonymous"].get(target)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("page", PAGES + ["orgs:tokens", "orgs:setup_download"])
def test_writes_refused_for_viewer_stranger_anonymous(actors, page):
    target = url(page, actors.org)
    assert actors.clients["viewer"].post(target, {}).status_code == 403
    assert actors.clients["other_admin"].post(target, {}).status_code == 404
    assert actors.clients["anonymous"].post(target, {}).status_code == 302


def test_unknown_org_is_404(actors):
    response = actors.clients["admin"].get(reverse("orgs:settings", kwargs={"org_key": "NOPE"}))
    assert response.status_code == 404


# --- settings ----------------------------------------------------------------------------------

def test_settings_update(actors):
    client = actors.clients["admin"]
    response = client.post(url("orgs:settings", actors.org), {
        "name": "ACME Corporation", "autobind_enabled": "on", "unmapped_window_hours": "48",
        "unmapped_lifetime_hours": "240", "content_access_mode": "sca"})
    assert response.status_code == 302
    org = Organization.objects.get(pk=actors.org.pk)
    assert org.name == "ACME Corporation"
    assert org.autobind_enabled is True
    assert org.hypervisor_autobind_enabled is False
    assert org.unmapped_window == timedelta(hours=48)
    assert org.unmapped_lifetime == timedelta(hours=240)
    assert org.content_access_mode == "sca"
    page = client.get(response["Location"]).content.decode()
    assert "Settings saved." in page
    assert 'value="48"' in page


def test_settings_invalid_values_are_shown(actors):
    response = actors.clients["admin"].post(url("orgs:settings", actors.org), {
        "name": "ACME", "unmapped_window_hours": "-1", "unmapped_lifetime_hours": "0",
        "content_access_mode": "entitlement"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "greater than or equal to 0" in page and "greater than or equal to 1" in page
    assert Organization.objects.get(pk=actors.org.pk).unmapped_window == actors.org.unmapped_window


def test_settings_read_only_for_viewer(actors):
    page = actors.clients["viewer"].get(url("orgs:settings", actors.org)).content.decode()
    assert 'id="read-only"' in page
    assert "Save settings" not in page
    assert "disabled" in page


# --- members -----------------------------------------------------------------------------------

def test_members_list_add_change_remove(actors):
    client = actors.clients["admin"]
    target = url("orgs:members", actors.org)
    page = client.get(target).content.decode()
    assert "org-admin" in page and "org-viewer" in page
    assert "other-admin" not in page  # another org's member

    assert client.post(target, {"action": "set", "username": "newbie", "role": "viewer"}).status_code == 302
    assert ("newbie", "viewer") in orgs.members(actors.org)
    assert client.post(target, {"action": "set", "username": "newbie", "role": "admin"}).status_code == 302
    assert ("newbie", "admin") in orgs.members(actors.org)
    assert client.post(target, {"action": "remove", "username": "newbie"}).status_code == 302
    assert "newbie" not in dict(orgs.members(actors.org))


def test_members_bad_role_and_self_demotion(actors):
    client = actors.clients["admin"]
    target = url("orgs:members", actors.org)
    assert client.post(target, {"action": "set", "username": "x", "role": "owner"}).status_code == 400
    response = client.post(target, {"action": "set", "username": "org-admin", "role": "viewer"})
    assert response.status_code == 400
    assert ("org-admin", "admin") in orgs.members(actors.org)
    client.post(target, {"action": "remove", "username": "org-admin"})
    assert ("org-admin", "admin") in orgs.members(actors.org)


def test_members_read_only_for_viewer(actors):
    page = actors.clients["viewer"].get(url("orgs:members", actors.org)).content.decode()
    assert "org-admin" in page
    assert "Save member" not in page and "Remove" not in page
    response = actors.clients["viewer"].post(url("orgs:members", actors.org),
                                             {"action": "remove", "username": "org-admin"})
    assert response.status_code == 403
    assert ("org-admin", "admin") in orgs.members(actors.org)


# --- tokens ------------------------------------------------------------------------------------

def test_token_created_shown_once_then_revoked(actors):
    client = actors.clients["admin"]
    target = url("orgs:tokens", actors.org)
    response = client.post(target, {"action": "create", "name": "ci", "role": "viewer",
                                    "expires_days": "30"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    plaintext = response.context["plaintext"]
    assert plaintext.startswith("sam_")
    assert plaintext in response.content.decode()
    token = ApiToken.objects.get(org=actors.org, name="ci")
    assert verify(plaintext).pk == token.pk
    assert token.created_by.username == "org-admin"

    again = client.get(target).content.decode()
    assert plaintext not in again  # never shown again
    assert f"sam_{token.prefix}_" in again and "ci" in again

    assert client.post(target, {"action": "revoke", "token": str(token.pk)}).status_code == 302
    token.refresh_from_db()
    assert token.revoked is not None
    assert verify(plaintext) is None


def test_token_errors(actors):
    client = actors.clients["admin"]
    target = url("orgs:tokens", actors.org)
    client.post(target, {"action": "create", "name": "dup", "role": "viewer"})
    response = client.post(target, {"action": "create", "name": "dup", "role": "viewer"})
    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    # another org's token cannot be revoked through this org
    foreign, _ = orgs.create_token(actors.other, "foreign", "admin")
    response = client.post(target, {"action": "revoke", "token": str(foreign.pk)}, follow=True)
    assert "No such token" in response.content.decode()
    foreign.refresh_from_db()
    assert foreign.revoked is None


# --- virt-who setup ----------------------------------------------------------------------------

ESX = {"hypervisor_type": "esx", "section": "esx-vcenter1", "server": "vcenter1.example.com",
       "username": "virtwho@vsphere.local", "password": "s3cret", "kubeconfig": "",
       "hypervisor_id": "hostname", "interval": "7200", "reporter_id": "vw-prod",
       "rhsm_hostname": "sam.example.com", "rhsm_port": "8443"}


def _parse(config: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(config)
    return parser


def test_setup_form_defaults_from_request(actors):
    """The configuration points where the browser reached this server: host and port from the
    request, the scheme's default port when the address has none (never a fixed port)."""
    client, page = actors.clients["admin"], url("orgs:setup", actors.org)
    response = client.get(page, HTTP_HOST="sam.corp.example:9443", secure=True)
    form = response.context["form"]
    assert form.initial["rhsm_hostname"] == "sam.corp.example"
    assert form.initial["rhsm_port"] == 9443
    assert 'id="needs-https"' not in response.content.decode()
    response = client.get(page, HTTP_HOST="sam.corp.example", secure=True)
    assert response.context["form"].initial["rhsm_port"] == 443
    response = client.get(page, HTTP_HOST="sam.corp.example:8000")
    assert response.context["form"].initial["rhsm_port"] == 8000
    assert 'id="needs-https"' in response.content.decode()  # virt-who cannot use plain HTTP
    response = client.get(page, HTTP_HOST="sam.corp.example")
    assert response.context["form"].initial["rhsm_port"] == 80


def test_setup_creates_reporter_token_and_config(actors):
    client = actors.clients["admin"]
    response = client.post(url("orgs:setup", actors.org), ESX)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    config = response.context["config"]
    parsed = _parse(config)
    assert parsed["global"]["interval"] == "7200"
    assert parsed["global"]["reporter_id"] == "vw-prod"
    section = parsed["esx-vcenter1"]
    assert dict(section) == {
        "type": "esx", "server": "vcenter1.example.com", "username": "virtwho@vsphere.local",
        "password": "s3cret", "owner": "ACME", "hypervisor_id": "hostname",
        "rhsm_hostname": "sam.example.com", "rhsm_port": "8443", "rhsm_prefix": "/candlepin",
        "rhsm_username": "virt-who", "rhsm_password": section["rhsm_password"],
    }
    token = verify(section["rhsm_password"])
    assert token is not None and token.role == "reporter" and token.org_id == actors.org.pk
    assert token.name == "virt-who vw-prod"
    page = response.content.decode()
    assert section["rhsm_password"] in page and "shown only this once" in page

    # Downloading: the page posts the text back and gets it as a file.
    download = client.post(url("orgs:setup_download", actors.org),
                           {"config": config, "filename": "esx-vcenter1.conf"})
    assert download.status_code == 200
    assert download["Content-Type"] == "text/plain; charset=utf-8"
    assert download["Content-Disposition"] == 'attachment; filename="esx-vcenter1.conf"'
    assert download.content.decode() == config

    # A second setup with the same reporter id gets its own token.
    again = client.post(url("orgs:setup", actors.org), ESX)
    assert again.status_code == 200
    assert ApiToken.objects.filter(org=actors.org, name="virt-who vw-prod (2)").exists()
    assert client.get(url("orgs:setup", actors.org)).content.decode().count("rhsm_password=sam_") == 0


def test_setup_kubevirt_and_libvirt(actors):
    client = actors.clients["admin"]
    kube = dict(ESX, hypervisor_type="kubevirt", section="kubevirt1", server="", username="",
                password="", kubeconfig="/root/.kube/config")
    section = _parse(client.post(url("orgs:setup", actors.org), kube).context["config"])["kubevirt1"]
    assert section["type"] == "kubevirt" and section["kubeconfig"] == "/root/.kube/config"
    assert "server" not in section and "password" not in section
    libvirt = dict(ESX, hypervisor_type="libvirt", section="kvm", server="qemu+ssh://root@kvm01/system",
                   username="", password="")
    section = _parse(client.post(url("orgs:setup", actors.org), libvirt).context["config"])["kvm"]
    assert section["server"] == "qemu+ssh://root@kvm01/system" and "password" not in section


@pytest.mark.parametrize("change, field", [
    ({"server": ""}, "server"),
    ({"username": ""}, "username"),
    ({"section": "bad name!"}, "section"),
    ({"interval": "10"}, "interval"),
    ({"reporter_id": "a\nrhsm_username=admin"}, "reporter_id"),
    ({"hypervisor_type": "kubevirt", "kubeconfig": ""}, "kubeconfig"),
    ({"hypervisor_type": "xen"}, "hypervisor_type"),
])
def test_setup_validation(actors, change, field):
    response = actors.clients["admin"].post(url("orgs:setup", actors.org), dict(ESX, **change))
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not ApiToken.objects.filter(org=actors.org).exists()


def test_setup_viewer_sees_it_needs_an_admin(actors):
    page = actors.clients["viewer"].get(url("orgs:setup", actors.org)).content.decode()
    assert 'id="needs-admin"' in page
    assert "virt-who-form" not in page
    assert actors.clients["viewer"].post(url("orgs:setup", actors.org), ESX).status_code == 403
    assert not ApiToken.objects.filter(org=actors.org).exists()


def test_setup_download_refuses_garbage(actors):
    client = actors.clients["admin"]
    assert client.post(url("orgs:setup_download", actors.org), {"config": ""}).status_code == 400
    response = client.post(url("orgs:setup_download", actors.org),
                           {"config": "[x]\n", "filename": '../../etc/passwd"'})
    assert response["Content-Disposition"] == 'attachment; filename="virt-who.conf"'
    assert client.get(url("orgs:setup_download", actors.org)).status_code == 302


def test_register_page_shows_the_pinned_bootstrap_and_keys(actors):
    from orgs import activation
    from sam import pki

    activation.create_key(actors.org, "rhel-key", release_ver="9.4")
    page = actors.clients["viewer"].get(url("orgs:register", actors.org),
                                        HTTP_HOST="sam.example.com:8443").content.decode()
    assert f"--pinnedpubkey &#x27;{pki.ca_pin()}&#x27;" in page
    assert "https://sam.example.com:8443/pub/bootstrap.sh" in page
    assert "rhel-key" in page and "--activationkey" in page
    assert "style=" not in page and "<script>" not in page  # the CSP allows neither


def test_activation_keys_admin_creates_and_deletes_viewer_reads(actors):
    from orgs.models import ActivationKey

    target = url("orgs:activation_keys", actors.org)
    client = actors.clients["admin"]
    assert client.post(target, {"action": "create", "name": "k1", "auto_attach": "on",
                                "release_ver": "9.4"}).status_code == 302
    key = ActivationKey.objects.get(org=actors.org, name="k1")
    assert key.auto_attach and key.release_ver == "9.4"
    duplicate = client.post(target, {"action": "create", "name": "k1"})
    assert duplicate.status_code == 400 and "already exists" in duplicate.content.decode()
    viewer_page = actors.clients["viewer"].get(target).content.decode()
    assert "k1" in viewer_page and "Create activation key" not in viewer_page
    assert actors.clients["viewer"].post(target, {"action": "delete", "key": key.pk}).status_code == 403
    assert client.post(target, {"action": "delete", "key": key.pk}).status_code == 302
    assert not ActivationKey.objects.exists()
