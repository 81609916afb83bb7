"""Issue 8 item 1: one rule for passwords and membership, and what happens to a member's tokens.

The takeover found by the review: an org admin posting an existing username with a password of
their choosing replaced that user's password (another org's admin, the superuser). Here every
surface (web form, API, CLI) is tried as that attacker; the victim's own password must still
work afterwards, the chosen one must not.
"""

from __future__ import annotations

import base64
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from orgs import services as orgs
from orgs.models import ApiToken
from sam.management.commands import addmember

pytestmark = pytest.mark.django_db

User = get_user_model()
VICTIM_PASSWORD = "victims-own-pass-1"
CHOSEN = "attacker-chosen-pass-1"
STAFF_PASSWORD = "staff-pass-word-1"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    """ACME with its admin; OTHER with its admin (the victim); a superuser; a staff user."""
    acme = orgs.create_org("ACME", "ACME Corp")
    other = orgs.create_org("OTHER", "Other Corp")
    admin = orgs.set_member_role(acme, "acme-admin", "admin", password="acme-admin-pass-1")
    orgs.set_member_role(other, "other-admin", "admin", password=VICTIM_PASSWORD)
    User.objects.create_superuser("root", password=VICTIM_PASSWORD)
    staff = User.objects.create_user("staffer", password=STAFF_PASSWORD, is_staff=True)
    return {"acme": acme, "other": other, "admin": admin, "staff": staff}


def basic(username: str, password: str) -> dict:
    value = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {value}"}


def signs_in(username: str, password: str) -> bool:
    """Through the sign-in form (as a person would), from an address of its own."""
    response = Client(REMOTE_ADDR="10.77.0.1").post(
        reverse("login"), {"username": username, "password": password})
    return response.status_code == 302


def api_accepts(username: str, password: str) -> bool:
    """Through HTTP Basic on the API (as a script would)."""
    response = APIClient().get("/api/v1/orgs/", REMOTE_ADDR="10.77.0.2", **basic(username, password))
    return response.status_code == 200


def password_intact(username: str) -> bool:
    return (signs_in(username, VICTIM_PASSWORD) and api_accepts(username, VICTIM_PASSWORD)
            and not signs_in(username, CHOSEN) and not api_accepts(username, CHOSEN))


def ui_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def members_url(org) -> str:
    return reverse("orgs:members", kwargs={"org_key": org.key})


# --- the takeover ------------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["other-admin", "root"])
def test_org_admin_cannot_take_over_an_account_through_the_web_form(world, victim):
    client = ui_client(world["admin"])
    url = members_url(world["acme"])
    answers = {}
    for username in (victim, "brand-new-user"):
        response = client.post(url, {"action": "set", "username": username, "role": "viewer",
                                     "password": CHOSEN}, follow=True)
        assert response.status_code == 200
        answers[username] = [str(m) for m in response.context["messages"]]
    assert password_intact(victim)
    # the same answer whether the name existed or not (no username enumeration)
    assert answers[victim] == [f"{victim} is now viewer."]
    assert answers["brand-new-user"] == ["brand-new-user is now viewer."]
    # a new account did get the password
    assert User.objects.get(username="brand-new-user").check_password(CHOSEN)


@pytest.mark.parametrize("victim", ["other-admin", "root"])
def test_org_admin_cannot_take_over_an_account_through_the_api(world, victim):
    client = api_client(world["admin"])
    url = "/api/v1/orgs/ACME/members/"
    taken = client.post(url, {"username": victim, "role": "viewer", "password": CHOSEN},
                        format="json")
    fresh = client.post(url, {"username": "fresh-user", "role": "viewer", "password": CHOSEN},
                        format="json")
    assert taken.status_code == fresh.status_code == 201
    assert taken.json() == {"username": victim, "role": "viewer"}
    assert fresh.json() == {"username": "fresh-user", "role": "viewer"}
    assert password_intact(victim)
    # changing a member's password explicitly is refused (the member is visible anyway)
    patch = client.patch(f"{url}{victim}/", {"role": "viewer", "password": CHOSEN}, format="json")
    assert patch.status_code == 400 and "password" in patch.json()["error"]["fields"]
    assert password_intact(victim)


@pytest.mark.parametrize("victim", ["other-admin", "root"])
def test_staff_who_is_not_superuser_cannot_set_passwords(world, victim):
    staff = world["staff"]
    assert api_client(staff).post("/api/v1/orgs/OTHER/members/", {
        "username": victim, "role": "admin", "password": CHOSEN}, format="json").status_code == 201
    if victim == "other-admin":
        patch = api_client(staff).patch(f"/api/v1/orgs/OTHER/members/{victim}/", {
            "role": "admin", "password": CHOSEN}, format="json")
        assert patch.status_code == 400
    ui_client(staff).post(members_url(world["other"]), {
        "action": "set", "username": victim, "role": "admin", "password": CHOSEN})
    assert password_intact(victim)


def test_token_of_an_org_admin_cannot_set_passwords_either(world):
    _, token = orgs.create_token(world["acme"], "automation", "admin", created_by=world["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post("/api/v1/orgs/ACME/members/", {
        "username": "root", "role": "viewer", "password": CHOSEN}, format="json")
    assert response.status_code == 201
    assert password_intact("root")


def test_superuser_and_the_operator_cli_set_an_existing_users_password(world):
    root = User.objects.get(username="root")
    response = api_client(root).patch("/api/v1/orgs/OTHER/members/other-admin/", {
        "role": "admin", "password": "reset-by-operator-1"}, format="json")
    assert response.status_code == 200
    assert signs_in("other-admin", "reset-by-operator-1")
    call_command("addmember", "OTHER", "other-admin", role="admin", password_stdin=True,
                 stdin=io.StringIO("reset-by-cli-pass-2\n"), stdout=io.StringIO())
    assert signs_in("other-admin", "reset-by-cli-pass-2")
    assert not signs_in("other-admin", "reset-by-operator-1")


@pytest.mark.parametrize("username", ["weakling-new", "other-admin"])
def test_weak_password_refused_with_the_validator_message_for_any_name(world, username):
    """The validators run for every name alike: existing or not, the same refusal."""
    api = api_client(world["admin"]).post("/api/v1/orgs/ACME/members/", {
        "username": username, "role": "viewer", "password": "q7"}, format="json")
    assert api.status_code == 400
    assert api.json()["error"]["fields"]["password"] == [
        "This password is too short. It must contain at least 8 characters."]
    page = ui_client(world["admin"]).post(members_url(world["acme"]), {
        "action": "set", "username": username, "role": "viewer", "password": "password"})
    assert page.status_code == 400
    assert "This password is too common." in page.content.decode()
    assert not User.objects.filter(username="weakling-new").exists()
    assert username not in dict(orgs.members(world["acme"]))
    with pytest.raises(CommandError, match="This password is too short"):
        call_command("addmember", "ACME", username, role="viewer", password_stdin=True,
                     stdin=io.StringIO("a\n"), stdout=io.StringIO())


def test_members_form_says_passwords_apply_only_to_new_accounts(world):
    page = ui_client(world["admin"]).get(members_url(world["acme"])).content.decode()
    assert "Passwords apply only to new accounts" in page


def test_ui_api_and_cli_share_one_service_function(world, monkeypatch):
    calls = []
    real = orgs.set_member_role

    def spy(*args, **kwargs):
        calls.append(kwargs.get("actor"))
        return real(*args, **kwargs)

    monkeypatch.setattr(orgs, "set_member_role", spy)
    monkeypatch.setattr(addmember, "set_member_role", spy)  # the command's own import of it
    ui_client(world["admin"]).post(members_url(world["acme"]),
                                   {"action": "set", "username": "via-ui", "role": "viewer"})
    api_client(world["admin"]).post("/api/v1/orgs/ACME/members/",
                                    {"username": "via-api", "role": "viewer"}, format="json")
    call_command("addmember", "ACME", "via-cli", role="viewer", stdout=io.StringIO())
    assert [getattr(a, "username", None) for a in calls[:2]] == ["acme-admin", "acme-admin"]
    assert calls[2] is orgs.OPERATOR
    assert {"via-ui", "via-api", "via-cli"} <= set(dict(orgs.members(world["acme"])))


# --- tokens of a member who leaves or loses a role -----------------------------------------------

def _tokens(world):
    """Tokens acme-admin created (one seen with two reporters), and one of another admin."""
    acme, admin = world["acme"], world["admin"]
    _, reporter = orgs.create_token(acme, "virt-who esx", "reporter", created_by=admin)
    _, automation = orgs.create_token(acme, "automation", "admin", created_by=admin)
    _, dashboards = orgs.create_token(acme, "dashboards", "viewer", created_by=admin)
    colleague = orgs.set_member_role(acme, "colleague", "admin", password="colleague-pass-1")
    _, kept = orgs.create_token(acme, "colleagues", "reporter", created_by=colleague)
    client = Client()
    for reporter_id in ("esx-west", "esx-east"):
        response = client.put(f"/candlepin/hypervisors/ACME/heartbeat?reporter_id={reporter_id}",
                              **basic("virt-who", reporter))
        assert response.status_code == 200, response.content
    return {"reporter": reporter, "automation": automation, "dashboards": dashboards, "kept": kept}


def _live(names) -> set[str]:
    return set(ApiToken.objects.filter(name__in=names, revoked__isnull=True)
               .values_list("name", flat=True))


ALL = ["virt-who esx", "automation", "dashboards", "colleagues"]


def test_api_removal_needs_confirmation_listing_tokens_and_reporters(world):
    plaintext = _tokens(world)
    client = api_client(User.objects.get(username="colleague"))
    url = "/api/v1/orgs/ACME/members/acme-admin/"
    refused = client.delete(url)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "confirmation_required"
    assert {t["name"]: t["reporter_ids"] for t in error["tokens"]} == {
        "automation": [], "dashboards": [], "virt-who esx": ["esx-east", "esx-west"]}
    # reporter ids where recorded, the token's name where not
    assert error["reporters"] == ["automation", "dashboards", "esx-east", "esx-west"]
    assert "acme-admin" in dict(orgs.members(world["acme"])) and _live(ALL) == set(ALL)
    assert client.delete(f"{url}?confirm=maybe").status_code == 400
    assert client.delete(f"{url}?confirm=true").status_code == 204
    assert "acme-admin" not in dict(orgs.members(world["acme"]))
    assert _live(ALL) == {"colleagues"}
    assert Client().put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=esx-west",
                        **basic("virt-who", plaintext["reporter"])).status_code == 401
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext['automation']}")
    assert bearer.get("/api/v1/orgs/ACME/").status_code == 401
    assert Client().put("/candlepin/hypervisors/ACME/heartbeat?reporter_id=c",
                        **basic("virt-who", plaintext["kept"])).status_code == 200


def test_api_demotion_revokes_only_the_rights_the_new_role_lacks(world):
    _tokens(world)
    client = api_client(User.objects.get(username="colleague"))
    url = "/api/v1/orgs/ACME/members/acme-admin/"
    refused = client.patch(url, {"role": "viewer"}, format="json")
    assert refused.status_code == 409
    assert {t["name"] for t in refused.json()["error"]["tokens"]} == {"automation", "virt-who esx"}
    assert dict(orgs.members(world["acme"]))["acme-admin"] == "admin"
    assert client.patch(f"{url}?confirm=true", {"role": "viewer"}, format="json").status_code == 200
    assert _live(ALL) == {"dashboards", "colleagues"}
    # nothing more to lose: no confirmation needed
    assert client.patch(url, {"role": "viewer"}, format="json").status_code == 200


def test_web_ui_removal_shows_a_confirmation_page_first(world):
    _tokens(world)
    client = ui_client(User.objects.get(username="colleague"))
    url = members_url(world["acme"])
    page = client.post(url, {"action": "remove", "username": "acme-admin"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "esx-east, esx-west" in html and "automation" in html and "dashboards" in html
    assert 'name="confirm" value="1"' in html
    assert "acme-admin" in dict(orgs.members(world["acme"])) and _live(ALL) == set(ALL)
    done = client.post(url, {"action": "remove", "username": "acme-admin", "confirm": "1"},
                       follow=True)
    assert "acme-admin is no longer a member. 3 token(s) revoked." in done.content.decode()
    assert _live(ALL) == {"colleagues"}


def test_web_ui_role_change_confirmation(world):
    _tokens(world)
    client = ui_client(User.objects.get(username="colleague"))
    url = members_url(world["acme"])
    page = client.post(url, {"action": "set", "username": "acme-admin", "role": "reporter"})
    assert page.status_code == 200 and 'id="revoked-tokens"' in page.content.decode()
    assert dict(orgs.members(world["acme"]))["acme-admin"] == "admin"
    client.post(url, {"action": "set", "username": "acme-admin", "role": "reporter", "confirm": "1"})
    assert dict(orgs.members(world["acme"]))["acme-admin"] == "reporter"
    assert _live(ALL) == {"virt-who esx", "colleagues"}  # a reporter keeps its reporter token


def test_cli_role_change_needs_confirm(world):
    _tokens(world)
    with pytest.raises(CommandError, match="would stop working: .*esx-east.*--confirm"):
        call_command("addmember", "ACME", "acme-admin", role="viewer", stdout=io.StringIO())
    assert _live(ALL) == set(ALL)
    call_command("addmember", "ACME", "acme-admin", role="viewer", confirm=True,
                 stdout=io.StringIO())
    assert _live(ALL) == {"dashboards", "colleagues"}


def test_token_made_with_a_token_belongs_to_the_person_behind_it(world):
    _, admin_token = orgs.create_token(world["acme"], "automation", "admin", created_by=world["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token}")
    response = client.post("/api/v1/orgs/ACME/tokens/", {"name": "child", "role": "admin"},
                           format="json")
    assert response.status_code == 201
    assert ApiToken.objects.get(name="child").created_by == world["admin"]
    orgs.remove_member(world["acme"], "acme-admin", confirm=True)
    assert _live(["automation", "child"]) == set()


def test_staff_members_keep_their_tokens(world):
    acme, staff = world["acme"], world["staff"]
    orgs.set_member_role(acme, "staffer", "admin")
    orgs.create_token(acme, "ops", "admin", created_by=staff)
    assert orgs.remove_member(acme, "staffer") == []
    assert _live(["ops"]) == {"ops"}


def test_staff_with_change_user_cannot_take_over_through_the_django_admin(world):
    """The operators' admin applies the same rule: a staff user holding ``auth.change_user``
    may not set another user's password, edit the superuser, or grant itself privileges."""
    from django.contrib.auth.models import Permission

    staff = world["staff"]
    staff.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="auth", codename__in=["change_user", "view_user"]))
    root, victim = User.objects.get(username="root"), User.objects.get(username="other-admin")
    client = Client()
    client.force_login(staff)
    for target in (root, victim):
        page = reverse("admin:auth_user_password_change", args=[target.pk])
        assert client.get(page).status_code == 403
        assert client.post(page, {"password1": CHOSEN, "password2": CHOSEN,
                                  "usable_password": "true"}).status_code == 403
    assert client.post(reverse("admin:auth_user_change", args=[root.pk]),
                       {"username": "root", "is_superuser": "on"}).status_code == 403
    # Its own record: privilege flags are read-only, so posting them changes nothing.
    own = reverse("admin:auth_user_change", args=[staff.pk])
    assert client.get(own).status_code == 200
    client.post(own, {"username": "staffer", "is_superuser": "on", "is_staff": "on",
                      "is_active": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    staff.refresh_from_db()
    assert not staff.is_superuser
    assert signs_in("root", VICTIM_PASSWORD) and not signs_in("root", CHOSEN)
    assert signs_in("other-admin", VICTIM_PASSWORD) and not signs_in("other-admin", CHOSEN)

    # The superuser still sets anyone's password there.
    superuser = Client()
    superuser.force_login(root)
    page = reverse("admin:auth_user_password_change", args=[victim.pk])
    assert superuser.post(page, {"password1": CHOSEN, "password2": CHOSEN,
                                 "usable_password": "true"}).status_code == 302
    assert signs_in("other-admin", CHOSEN)
