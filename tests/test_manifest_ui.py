"""The manifest in the web UI (upload page with conflicts and the choice to force, delete,
history, read-only manifest subscriptions, the dashboard's expiry) and the operator command
``trust_manifest_cert``."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client

from orgs.services import create_org
from subscriptions.manifest import signature
from subscriptions.models import ManifestImport, Subscription, UpstreamDistributor
from tests import manifests as m
from tests.api_actors import make_actors

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = "katello-manifest_small_modified-2017.zip"  # modified (SIGNATURE_CONFLICT), active until 2038
PAGE = "/o/ACME/subscriptions/manifest/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def clients():
    org = create_org("ACME", "ACME Corp")
    make_actors(org)
    out = {}
    for actor, username in (("admin", "org-admin"), ("viewer", "org-viewer"), ("other_admin", "other-admin")):
        client = Client()
        client.force_login(get_user_model().objects.get(username=username))
        out[actor] = client
    out["org"] = org
    return out


def post(client, name=SMALL, force=()):
    return client.post(PAGE, {"file": SimpleUploadedFile(name, m.data(name)), "force": list(force)})


def ticked(key: str, html: str) -> bool:
    return re.search(rf'value="{key}"[^>]*checked', html) is not None


def test_page_access(clients):
    assert clients["admin"].get(PAGE).status_code == 200
    viewer_page = clients["viewer"].get(PAGE)
    assert viewer_page.status_code == 200 and b'enctype="multipart/form-data"' not in viewer_page.content
    assert clients["other_admin"].get(PAGE).status_code == 404
    assert Client().get(PAGE).status_code == 302
    assert post(clients["viewer"]).status_code == 403
    assert clients["viewer"].post(f"{PAGE}delete/").status_code == 403


def test_conflicts_are_shown_with_the_choice_to_force(clients):
    admin = clients["admin"]
    page = post(admin)
    assert page.status_code == 409
    html = page.content.decode()
    assert "SIGNATURE_CONFLICT" in html and "trust_manifest_cert" in html
    assert ticked("SIGNATURE_CONFLICT", html)  # ticked for the retry
    done = post(admin, force=["SIGNATURE_CONFLICT"])
    assert done.status_code == 302
    html = admin.get(PAGE).content.decode()
    assert "jturel-katello-2" in html and "RH2262474" in html and "2038-02-02" in html
    assert 'id="manifest-history"' in html and "SUCCESS" in html
    again = post(admin, force=["SIGNATURE_CONFLICT"])  # same manifest: MANIFEST_SAME offered as well
    html = again.content.decode()
    assert again.status_code == 409 and "MANIFEST_SAME" in html
    assert ticked("MANIFEST_SAME", html) and ticked("SIGNATURE_CONFLICT", html)


def test_unreadable_file_says_what_is_wrong(clients):
    page = clients["admin"].post(PAGE, {"file": SimpleUploadedFile("x.zip", b"not a zip at all")})
    assert page.status_code == 400 and b"not a readable zip file" in page.content
    assert not ManifestImport.objects.exists()


def test_manifest_subscriptions_are_read_only_in_the_ui(clients):
    admin = clients["admin"]
    post(admin, force=["SIGNATURE_CONFLICT"])
    sub = Subscription.objects.get(org=clients["org"])
    detail = admin.get(f"/o/ACME/subscriptions/{sub.uuid}/").content.decode()
    assert 'id="managed-note"' in detail and f"/subscriptions/{sub.uuid}/edit/" not in detail
    assert admin.get(f"/o/ACME/subscriptions/{sub.uuid}/edit/").status_code == 403
    assert admin.post(f"/o/ACME/subscriptions/{sub.uuid}/delete/").status_code == 403
    assert "manifest</span>" in admin.get("/o/ACME/subscriptions/").content.decode()
    assert Subscription.objects.filter(pk=sub.pk).exists()


def test_dashboard_shows_the_manifest_and_subscription_expiry(clients):
    admin = clients["admin"]
    assert b"No Red Hat manifest imported" in admin.get("/o/ACME/").content
    post(admin, force=["SIGNATURE_CONFLICT"])
    html = admin.get("/o/ACME/").content.decode()
    section = html[html.index('id="h-manifest"'):html.index('id="h-pools"')]
    assert "jturel-katello-2" in section and "manifest expires 2018-11-21" in section
    assert "expired" in section  # the identity certificate expired in 2018
    assert "RH2262474" in section and "2038-02-02" in section


def test_delete_manifest_from_the_page(clients):
    admin = clients["admin"]
    post(admin, force=["SIGNATURE_CONFLICT"])
    assert admin.post(f"{PAGE}delete/").status_code == 302
    assert not Subscription.objects.exists() and not UpstreamDistributor.objects.exists()
    html = admin.get(PAGE).content.decode()
    assert "Subscriptions deleted by org-admin." in html and "No manifest imported" in html


# --- trust_manifest_cert ------------------------------------------------------------------------

def test_trust_manifest_cert_adds_and_lists(settings, tmp_path):
    settings.SAM_MANIFEST_TRUST_DIR = str(tmp_path / "pki" / "upstream")
    out = io.StringIO()
    call_command("trust_manifest_cert", str(m.REDHAT_CA), stdout=out)
    text = out.getvalue()
    assert "Trusted: D2:87:55:9E" in text and "Red Hat Candlepin Authority" in text
    assert len(signature.trusted_certificates()) == 1
    out = io.StringIO()
    call_command("trust_manifest_cert", "--list", stdout=out)
    assert "1 trusted upstream certificate(s)" in out.getvalue()
    call_command("trust_manifest_cert", str(m.REDHAT_CA), stdout=io.StringIO())  # idempotent
    assert len(signature.trusted_certificates()) == 1
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    for args in ([str(bad)], [str(tmp_path / "missing.pem")], []):
        with pytest.raises(CommandError):
            call_command("trust_manifest_cert", *args, stdout=io.StringIO())


def test_trusted_certificate_makes_the_red_hat_manifest_valid(settings, tmp_path, clients):
    settings.SAM_MANIFEST_TRUST_DIR = str(tmp_path / "upstream")
    call_command("trust_manifest_cert", str(m.REDHAT_CA), stdout=io.StringIO())
    name = "robottelo-expired-manifest-2023-03.zip"
    with m.at_export(name):
        assert post(clients["admin"], name).status_code == 302
    record = ManifestImport.objects.get()
    assert (record.signature, record.status) == ("valid", "SUCCESS")
