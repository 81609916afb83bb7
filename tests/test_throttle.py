"""Credential throttling (performance.md R8, issue 8 item 3) and the shared authentication module.

After 10 failures within 5 minutes per (address, username), and per address across usernames,
every further attempt gets 429 with ``Retry-After`` in its surface's error shape (or the sign-in
form's error) without a password hash; the right password from another address still works.
Hashes are counted with a real (cheap) password hasher that counts its own calls.
"""

from __future__ import annotations

import base64
import http.client
import json

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from orgs import services as orgs
from orgs.auth import Throttled, check_throttle, client_address
from tests import rhsm_helper, workers
from tests.hashers import CountingHasher

pytestmark = pytest.mark.django_db

PASSWORD = "right-pass-word-1"
ATTACKER = "10.66.0.1"
ELSEWHERE = "10.99.0.7"


@pytest.fixture(autouse=True)
def counting_hasher(settings):
    settings.PASSWORD_HASHERS = ["tests.hashers.CountingHasher"]
    CountingHasher.calls = 0
    return CountingHasher


@pytest.fixture
def org():
    org = orgs.create_org("ACME", "ACME Corp")
    orgs.set_member_role(org, "alice", "admin", password=PASSWORD)
    orgs.set_member_role(org, "virtwho", "reporter", password=PASSWORD)
    CountingHasher.calls = 0
    return org


def basic(username: str, password: str) -> dict:
    value = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {value}"}


CANDLEPIN = "/candlepin/owners/ACME"
API = "/api/v1/orgs/ACME/"


def _get(path: str, username: str, password: str, address: str = ATTACKER):
    return Client().get(path, REMOTE_ADDR=address, **basic(username, password))


def _retry_after(response) -> int:
    value = int(response["Retry-After"])
    assert 1 <= value <= 300
    return value


@pytest.mark.parametrize("username", ["alice", "nobody-at-all"])
def test_candlepin_basic_eleventh_failure_is_429_without_hashing(org, username):
    """Wrong password and unknown user behave alike: same answers, one hash per failure."""
    answers = []
    for attempt in range(10):
        response = _get(CANDLEPIN, username, f"guess-{attempt}")
        answers.append((response.status_code, response.json()["displayMessage"]))
    assert answers == [(401, "Invalid username or password.")] * 10
    assert CountingHasher.calls == 10
    locked = _get(CANDLEPIN, username, "guess-10")
    assert locked.status_code == 429
    _retry_after(locked)
    body = locked.json()
    assert "Too many failed sign-in attempts" in body["displayMessage"] and body["requestUuid"]
    assert locked["x-candlepin-request-uuid"] == body["requestUuid"]
    # locked out: even the right password is not tried from this address, and nothing is hashed
    assert _get(CANDLEPIN, "alice", PASSWORD).status_code == 429
    assert CountingHasher.calls == 10
    # another address is not affected
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200


def test_api_basic_and_bearer_are_throttled_in_the_api_error_shape(org):
    for attempt in range(10):
        assert _get(API, "alice", f"guess-{attempt}").status_code == 401
    locked = _get(API, "alice", "guess-10")
    assert locked.status_code == 429
    _retry_after(locked)
    assert locked.json()["error"]["code"] == "throttled"
    assert "Too many failed sign-in attempts" in locked.json()["error"]["message"]
    assert _get(API, "alice", PASSWORD, address=ELSEWHERE).status_code == 200

    bearer_client = Client()
    for attempt in range(10):
        response = bearer_client.get(API, REMOTE_ADDR="10.66.0.2",
                                     HTTP_AUTHORIZATION=f"Bearer sam_0000_{attempt}")
        assert response.status_code == 401
    _, token = orgs.create_token(org, "ci", "viewer")
    locked = bearer_client.get(API, REMOTE_ADDR="10.66.0.2", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "throttled"
    _retry_after(locked)
    assert bearer_client.get(API, REMOTE_ADDR=ELSEWHERE,
                             HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


def test_one_address_guessing_many_usernames_is_throttled(org):
    for attempt in range(10):
        assert _get(CANDLEPIN, f"user-{attempt}", "guess").status_code == 401
    assert _get(CANDLEPIN, "alice", PASSWORD).status_code == 429
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200


def test_nine_failures_then_the_right_password_works(org):
    for attempt in range(9):
        assert _get(CANDLEPIN, "alice", f"guess-{attempt}").status_code == 401
    assert _get(CANDLEPIN, "alice", PASSWORD).status_code == 200


def test_a_cached_credential_does_not_open_a_locked_address(org):
    """The verified-credential cache is consulted only after the throttle: otherwise a locked
    attacker could still tell the right password (200) from wrong ones (429)."""
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200  # cached now
    for attempt in range(10):
        _get(CANDLEPIN, "alice", f"guess-{attempt}")
    assert _get(CANDLEPIN, "alice", PASSWORD).status_code == 429
    calls = CountingHasher.calls
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200
    assert CountingHasher.calls == calls  # served from the cache: no hash


def test_login_form_shows_the_lockout(org):
    client = Client(REMOTE_ADDR=ATTACKER)
    url = reverse("login")
    for attempt in range(10):
        response = client.post(url, {"username": "alice", "password": f"guess-{attempt}"})
        assert response.status_code == 200
        assert "didn't match" in response.content.decode()
    assert CountingHasher.calls == 10
    locked = client.post(url, {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    _retry_after(locked)
    assert "Too many failed sign-in attempts from this address" in locked.content.decode()
    assert CountingHasher.calls == 10 and "_auth_user_id" not in client.session
    signed_in = Client(REMOTE_ADDR=ELSEWHERE).post(url, {"username": "alice", "password": PASSWORD})
    assert signed_in.status_code == 302


def test_admin_login_form_is_throttled_too(org):
    client = Client(REMOTE_ADDR=ATTACKER)
    for attempt in range(10):
        client.post("/admin/login/", {"username": "alice", "password": f"guess-{attempt}"})
    response = client.post("/admin/login/", {"username": "alice", "password": PASSWORD})
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert CountingHasher.calls == 10


def test_forwarded_for_counts_only_from_a_trusted_proxy(org, settings, rf):
    """Rotating X-Forwarded-For does not escape the lockout; behind a trusted proxy each
    client address counts on its own."""
    for attempt in range(10):
        response = Client().get(CANDLEPIN, REMOTE_ADDR=ATTACKER,
                                HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}",
                                **basic("alice", "guess"))
        assert response.status_code == 401
    assert Client().get(CANDLEPIN, REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR="192.0.2.99",
                        **basic("alice", PASSWORD)).status_code == 429

    settings.SAM_FORWARDED_ALLOW_IPS = ["10.0.0.5"]
    proxied = rf.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.4")
    assert client_address(proxied) == "198.51.100.4"  # the entry our proxy appended
    assert client_address(rf.get("/", REMOTE_ADDR="10.0.0.6",
                                 HTTP_X_FORWARDED_FOR="198.51.100.4")) == "10.0.0.6"
    assert client_address(rf.get("/", REMOTE_ADDR="")) is None
    for _ in range(10):
        Client().get(CANDLEPIN, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.4",
                     **basic("alice", "guess"))
    assert Client().get(CANDLEPIN, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.4",
                        **basic("alice", PASSWORD)).status_code == 429
    assert Client().get(CANDLEPIN, REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="198.51.100.5",
                        **basic("alice", PASSWORD)).status_code == 200


def test_hostile_credentials_are_a_clear_4xx(org):
    # NUL is refused by the input layer before authentication (400); an oversized name is
    # simply wrong credentials (401).
    for username, password, status in (("al\x00ice", "x", 400), ("alice", "pa\x00ss", 400),
                                       ("x" * 5000, "y", 401), ("virt-who", "sam_12_\x00", 400)):
        for path in (CANDLEPIN, API):
            assert _get(path, username, password).status_code == status
    bearer = Client().get(API, REMOTE_ADDR=ATTACKER, HTTP_AUTHORIZATION="Bearer sam_1_" + "z" * 5000)
    assert bearer.status_code in (401, 429)


def test_a_failed_request_body_is_never_parsed_or_stored(org, settings):
    """The throttle records a failure from the headers: a large form-encoded body on the
    check-in endpoint is neither parsed into a dictionary nor stored (413/500 otherwise)."""
    from axes.models import AccessAttempt

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    body = "&".join(f"f{i}=" + "v" * 100 for i in range(20_000))  # about 2 MB of form fields
    response = Client().post("/candlepin/hypervisors/ACME?reporter_id=r1", body,
                             content_type="application/x-www-form-urlencoded",
                             REMOTE_ADDR=ATTACKER, **basic("alice", "wrong"))
    assert response.status_code == 401
    assert list(AccessAttempt.objects.values_list("username", "get_data", "post_data")) == [
        ("alice", "", "")]


def test_check_throttle_is_the_public_entry_for_other_credential_types(org, rf):
    """What a new credential type (consumer certificates) calls before verifying."""
    request = rf.get("/", REMOTE_ADDR="10.66.0.9")
    check_throttle(request, "cert:abc")  # nothing recorded: allowed
    for _ in range(10):
        Client().get(CANDLEPIN, REMOTE_ADDR="10.66.0.9", **basic("x", "y"))
    with pytest.raises(Throttled) as caught:
        check_throttle(rf.get("/", REMOTE_ADDR="10.66.0.9"), "cert:abc")
    assert 1 <= caught.value.retry_after <= 300


# --- the verified-credential cache -------------------------------------------------------------

def test_credentials_cache_is_shared_and_invalidated_by_a_password_change(org, settings):
    from django.contrib.auth import get_user_model

    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200
    calls = CountingHasher.calls
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200
    assert CountingHasher.calls == calls  # the second request was served from the cache
    if settings.REDIS_URL:
        assert type(caches["default"]).__name__ == "TolerantRedisCache"
    alice = get_user_model().objects.get(username="alice")
    alice.set_password("a-new-pass-word-2")
    alice.save()
    assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 401
    assert _get(CANDLEPIN, "alice", "a-new-pass-word-2", address=ELSEWHERE).status_code == 200
    alice.is_active = False
    alice.save()
    assert _get(CANDLEPIN, "alice", "a-new-pass-word-2", address=ELSEWHERE).status_code == 401


def test_an_unreachable_redis_is_a_cache_miss_not_an_error(org, settings):
    settings.CACHES = {"default": {
        "BACKEND": "sam.cache.TolerantRedisCache",
        "LOCATION": f"redis://127.0.0.1:{workers.free_port()}/0",  # nothing listens there
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    for _ in range(2):
        assert _get(CANDLEPIN, "alice", PASSWORD, address=ELSEWHERE).status_code == 200
    assert _get(CANDLEPIN, "alice", "wrong", address=ELSEWHERE).status_code == 401


@pytest.mark.postgres_only("needs Redis, where the cache shares its database with the broker")
def test_clearing_the_cache_keeps_the_broker_queues(settings):
    """``cache.clear()`` deletes the cache's own keys: a FLUSHDB would drop waiting tasks."""
    import redis
    from django.core.cache import cache

    workers.require_services()
    client = redis.Redis.from_url(settings.REDIS_URL)
    queue = f"{settings.SAM_REPORT_QUEUE}-clear-test"
    client.delete(queue)
    client.lpush(queue, b"a waiting task")
    try:
        cache.set("clear-me", 1)
        cache.set("clear-me-too", 2)
        assert cache.get("clear-me") == 1
        cache.clear()
        assert cache.get("clear-me") is None and cache.get("clear-me-too") is None
        assert client.lrange(queue, 0, -1) == [b"a waiting task"]
    finally:
        client.delete(queue)


# --- through the production server ---------------------------------------------------------------

def _https_get(server, path: str, auth: dict, source: str) -> tuple[int, dict, dict]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(),
                                       timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": auth["HTTP_AUTHORIZATION"]})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_candlepin_basic_throttled_through_manage_py_serve(tmp_path, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # the server's
    org = orgs.create_org("ACME", "ACME Corp")
    orgs.set_member_role(org, "alice", "admin", password=PASSWORD)
    server = rhsm_helper.start_server(tmp_path / "serve")
    try:
        for attempt in range(10):
            status, _, body = _https_get(server, CANDLEPIN, basic("alice", f"guess-{attempt}"),
                                         "127.0.0.1")
            assert status == 401 and body["displayMessage"] == "Invalid username or password."
        status, headers, body = _https_get(server, CANDLEPIN, basic("alice", PASSWORD), "127.0.0.1")
        assert status == 429 and 1 <= int(headers["Retry-After"]) <= 300
        assert "Too many failed sign-in attempts" in body["displayMessage"]
        status, _, body = _https_get(server, CANDLEPIN, basic("alice", PASSWORD), "127.0.0.2")
        assert status == 200 and body["key"] == "ACME"
    finally:
        rhsm_helper.stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-4000:]
