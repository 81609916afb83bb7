"""REST API v1: organizations, members and API tokens, through the fixed actors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from orgs import services as orgs
from orgs.models import ApiToken
from tests.api_actors import READ, WRITE, make_actors
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

BASE = "/api/v1/orgs/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The actors' passwords are hashed on every test: a cheap hasher keeps the matrix fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def actors():
    return make_actors(orgs.create_org("ACME", "ACME Corp"))


def check(actors, method: str, url: str, expected: dict, body=None) -> dict:
    """Call ``url`` as every actor (in ``expected`` order) and assert the status codes."""
    responses = {}
    for name, code in expected.items():
        response = getattr(actors.clients[name], method)(url, body, format="json")
        assert response.status_code == code, (name, method, url, response.content)
        if code >= 400:
            assert set(response.json()) == {"error"}, response.content
        responses[name] = response
    return responses


def token_client(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


# --- Permission matrix ------------------------------------------------------------------------

def test_matrix_org_list_shows_only_visible_orgs(actors):
    expected = {"admin": 200, "viewer": 200, "reporter": 200, "other_admin": 200, "anonymous": 401}
    responses = check(actors, "get", BASE, expected)
    keys = {name: [o["key"] for o in r.json()["results"]] for name, r in responses.items()
            if r.status_code == 200}
    assert keys == {"admin": ["ACME"], "viewer": ["ACME"], "reporter": [], "other_admin": ["OTHER"]}


def test_matrix_org_detail_and_settings(actors):
    check(actors, "get", f"{BASE}ACME/", READ)
    check(actors, "patch", f"{BASE}ACME/", {**WRITE, "admin": 200}, {"name": "Acme Inc"})
    assert orgs.get_org("ACME").name == "Acme Inc"


def test_matrix_org_create_is_for_operators(actors):
    expected = {"admin": 403, "viewer": 403, "reporter": 403, "other_admin": 403, "anonymous": 401}
    check(actors, "post", BASE, expected, {"key": "NEW", "name": "New"})
    staff = APIClient()
    staff.force_authenticate(UserFactory(is_staff=True))
    response = staff.post(BASE, {"key": "NEW", "name": "New", "unmapped_window_hours": 48},
                          format="json")
    assert response.status_code == 201, response.content
    assert response.json()["unmapped_window_hours"] == 48
    assert orgs.get_org("NEW").unmapped_window == timedelta(hours=48)
    assert staff.get(f"{BASE}ACME/").status_code == 200  # staff see everything
    duplicate = staff.post(BASE, {"key": "NEW", "name": "New"}, format="json")
    assert duplicate.status_code == 400 and duplicate.json()["error"]["code"] == "duplicate"


def test_matrix_members(actors):
    url = f"{BASE}ACME/members/"
    check(actors, "get", url, READ)
    check(actors, "get", f"{url}org-viewer/", READ)
    check(actors, "post", url, {**WRITE, "admin": 201}, {"username": "newbie", "role": "viewer"})
    check(actors, "patch", f"{url}newbie/", {**WRITE, "admin": 200}, {"role": "admin"})
    check(actors, "delete", f"{url}newbie/", {**WRITE, "admin": 204})


def test_matrix_tokens(actors):
    url = f"{BASE}ACME/tokens/"
    token_id = ApiToken.objects.get(org=actors.org, name="virt-who").pk
    # Admins only, even to read (issue 8): names and roles say who can act on the org.
    check(actors, "get", url, {**READ, "viewer": 403})
    check(actors, "get", f"{url}{token_id}/", {**READ, "viewer": 403})
    check(actors, "post", url, {**WRITE, "admin": 201}, {"name": "ci", "role": "viewer"})
    ci = ApiToken.objects.get(org=actors.org, name="ci").pk
    check(actors, "delete", f"{url}{ci}/", {**WRITE, "admin": 204})


# --- Organizations ----------------------------------------------------------------------------

def test_settings_patch_with_etag_and_hours(actors):
    admin = actors.clients["admin"]
    first = admin.get(f"{BASE}ACME/")
    tag = first["ETag"]
    assert first.json()["unmapped_window_hours"] == 24
    assert first.json()["unmapped_lifetime_hours"] == 7 * 24
    stale = admin.patch(f"{BASE}ACME/", {"name": "X"}, format="json", HTTP_IF_MATCH='"1"')
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "precondition_failed"
    body = {"unmapped_window_hours": 36, "unmapped_lifetime_hours": 240, "autobind_enabled": False,
            "content_access_mode": "sca"}
    response = admin.patch(f"{BASE}ACME/", body, format="json", HTTP_IF_MATCH=tag)
    assert response.status_code == 200, response.content
    assert response["ETag"] != tag and response.json()["updated"]
    org = orgs.get_org("ACME")
    assert org.unmapped_window == timedelta(hours=36) and org.unmapped_lifetime == timedelta(days=10)
    assert not org.autobind_enabled and org.content_access_mode == "sca"
    again = admin.patch(f"{BASE}ACME/", {"name": "Y"}, format="json", HTTP_IF_MATCH=tag)
    assert again.status_code == 412


def test_settings_validation_errors(actors):
    admin = actors.clients["admin"]
    for body in ({"unmapped_lifetime_hours": 0}, {"unmapped_window_hours": -1},
                 {"content_access_mode": "nope"}, {"name": ""}):
        response = admin.patch(f"{BASE}ACME/", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "invalid"
    assert actors.clients["admin"].get(f"{BASE}NOPE/").status_code == 404


# --- Members ----------------------------------------------------------------------------------

def test_member_lifecycle(actors):
    admin = actors.clients["admin"]
    url = f"{BASE}ACME/members/"
    created = admin.post(url, {"username": "dora", "role": "viewer", "password": "a-long-pass-1"},
                         format="json")
    assert created.json() == {"username": "dora", "role": "viewer"}
    dora = APIClient()
    dora.credentials(HTTP_AUTHORIZATION="Basic ZG9yYTphLWxvbmctcGFzcy0x")  # dora:a-long-pass-1
    assert dora.get(f"{BASE}ACME/").status_code == 200
    assert dora.patch(f"{BASE}ACME/", {"name": "x"}, format="json").status_code == 403
    assert admin.patch(f"{url}dora/", {"role": "admin"}, format="json").json()["role"] == "admin"
    assert dora.patch(f"{BASE}ACME/", {"name": "x"}, format="json").status_code == 200
    names = {m["username"]: m["role"] for m in admin.get(url).json()["results"]}
    assert names == {"org-admin": "admin", "org-viewer": "viewer", "dora": "admin"}
    assert admin.delete(f"{url}dora/").status_code == 204
    assert admin.get(f"{url}dora/").status_code == 404
    assert dora.get(f"{BASE}ACME/").status_code == 404
    assert admin.patch(f"{url}nobody/", {"role": "admin"}, format="json").status_code == 404
    bad = admin.post(url, {"username": "x", "role": "king"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()["error"]["fields"]
    # an org admin cannot take over an existing account (it may be another org's admin): the
    # password of an existing name is not applied (tests/test_accounts.py), a PATCH is refused
    response = admin.patch(f"{url}org-viewer/", {"role": "viewer", "password": "x-pass-1"},
                           format="json")
    assert response.status_code == 400 and "password" in response.json()["error"]["fields"]
    # another org's member is not visible here
    assert admin.get(f"{url}other-admin/").status_code == 404


# --- Tokens -----------------------------------------------------------------------------------

def _create_token(actors, **body) -> dict:
    response = actors.clients["admin"].post(f"{BASE}ACME/tokens/", {"role": "viewer", **body},
                                            format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_token_plaintext_shown_once_and_never_stored(actors):
    created = _create_token(actors, name="ci")
    plaintext = created["token"]
    assert plaintext.startswith("sam_") and created["prefix"] in plaintext
    assert created["revoked"] is None and created["created_by"] == "org-admin"
    admin = actors.clients["admin"]
    listed = admin.get(f"{BASE}ACME/tokens/")
    detail = admin.get(f"{BASE}ACME/tokens/{created['id']}/")
    for response in (listed, detail):
        assert plaintext not in response.content.decode() and b'"token"' not in response.content
    secret = plaintext.split("_", 2)[2]  # the secret itself may contain "_"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table} WHERE id = %s", [created["id"]])
        row = cursor.fetchone()
    assert row and not any(secret in str(value) or plaintext in str(value) for value in row)


def test_token_authenticates_as_its_role(actors):
    plaintext = _create_token(actors, name="ci")["token"]
    client = token_client(plaintext)
    assert client.get(f"{BASE}ACME/systems/").status_code == 200
    assert client.post(f"{BASE}ACME/systems/", {"name": "x"}, format="json").status_code == 403
    assert [o["key"] for o in client.get(BASE).json()["results"]] == ["ACME"]


def test_expired_and_revoked_tokens_are_refused(actors):
    expires = (timezone.now() + timedelta(days=1)).isoformat()
    created = _create_token(actors, name="short", expires=expires)
    client = token_client(created["token"])
    assert client.get(f"{BASE}ACME/systems/").status_code == 200
    ApiToken.objects.filter(pk=created["id"]).update(expires=timezone.now() - timedelta(seconds=1))
    response = client.get(f"{BASE}ACME/systems/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"

    revocable = _create_token(actors, name="revocable")
    client = token_client(revocable["token"])
    assert client.get(f"{BASE}ACME/systems/").status_code == 200
    assert actors.clients["admin"].delete(f"{BASE}ACME/tokens/{revocable['id']}/").status_code == 204
    assert client.get(f"{BASE}ACME/systems/").status_code == 401
    row = actors.clients["admin"].get(f"{BASE}ACME/tokens/{revocable['id']}/").json()
    assert row["revoked"] is not None  # the row stays
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    bad = actors.clients["admin"].post(f"{BASE}ACME/tokens/", {"name": "old", "role": "viewer",
                                                              "expires": past}, format="json")
    assert bad.status_code == 400


def test_token_of_another_org_sees_nothing_here(actors):
    _, plaintext = orgs.create_token(actors.other, "theirs", "admin")
    client = token_client(plaintext)
    assert client.get(f"{BASE}ACME/systems/").status_code == 404
    assert client.get(f"{BASE}ACME/").status_code == 404
    assert client.get(f"{BASE}OTHER/systems/").status_code == 200
    other_token = ApiToken.objects.get(org=actors.other, name="theirs").pk
    assert actors.clients["admin"].delete(f"{BASE}ACME/tokens/{other_token}/").status_code == 404


def test_token_last_used_written_at_most_once_a_minute(actors):
    created = _create_token(actors, name="busy")
    client = token_client(created["token"])
    assert ApiToken.objects.get(pk=created["id"]).last_used is None
    client.get(f"{BASE}ACME/")
    first = ApiToken.objects.get(pk=created["id"]).last_used
    assert first is not None
    client.get(f"{BASE}ACME/")
    assert ApiToken.objects.get(pk=created["id"]).last_used == first
    earlier = timezone.now() - timedelta(minutes=2)
    ApiToken.objects.filter(pk=created["id"]).update(last_used=earlier)
    client.get(f"{BASE}ACME/")
    assert ApiToken.objects.get(pk=created["id"]).last_used > earlier


def test_token_duplicate_name_and_bad_role(actors):
    _create_token(actors, name="ci")
    admin = actors.clients["admin"]
    dup = admin.post(f"{BASE}ACME/tokens/", {"name": "ci", "role": "viewer"}, format="json")
    assert dup.status_code == 400 and dup.json()["error"]["code"] == "duplicate"
    bad = admin.post(f"{BASE}ACME/tokens/", {"name": "x", "role": "king"}, format="json")
    assert bad.status_code == 400
    assert admin.delete(f"{BASE}ACME/tokens/999999/").status_code == 404
