"""Secure defaults over TLS (README "Security headers"): cookie flags and headers on responses of
``manage.py serve`` (HTTPS, and plain HTTP behind a trusted proxy), the plain-HTTP development
server's cookies, ``SAM_HSTS_SECONDS``, and ``check --deploy`` for the README's production setup.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from sam import tls
from tests import rhsm_helper
from tests.scenario import acme

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a-long-and-secret-pass"
HEADERS = {  # the same on every page, HTTP or HTTPS
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _opener(server, jar):
    handlers = [urllib.request.HTTPCookieProcessor(jar)]
    if server.tls:
        handlers.append(urllib.request.HTTPSHandler(context=server.ssl_context()))
    return urllib.request.build_opener(*handlers)


def sign_in(server, headers: dict | None = None) -> tuple[list[str], list[str], dict]:
    """GET the sign-in form and POST the password, as a browser does. Returns the Set-Cookie
    headers of both responses and the headers of the form page."""
    jar = http.cookiejar.CookieJar()
    opener = _opener(server, jar)
    headers = headers or {}
    form_request = urllib.request.Request(f"{server.url}/accounts/login/", headers=headers)
    with opener.open(form_request, timeout=10) as response:
        form_cookies = response.headers.get_all("Set-Cookie") or []
        page_headers = dict(response.headers)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode())
    assert token, "no CSRF token in the sign-in form"
    # The cookie jar keeps a Secure cookie from sending over plain HTTP (the proxy case): send
    # the CSRF cookie by hand there, as the browser behind the proxy would over HTTPS.
    csrf = re.search(r"csrftoken=([^;]+)", " ".join(form_cookies)).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), "username": "admin",
                                   "password": PASSWORD, "next": "/"}).encode()
    origin = headers.get("X-Forwarded-Proto", "https" if server.tls else "http") + \
        f"://127.0.0.1:{server.port}"
    post = urllib.request.Request(f"{server.url}/accounts/login/", data=data, headers={
        **headers, "Referer": f"{origin}/accounts/login/", "Origin": origin,
        "Cookie": f"csrftoken={csrf}"})
    no_redirect = urllib.request.build_opener(
        *([urllib.request.HTTPSHandler(context=server.ssl_context())] if server.tls else []),
        _NoRedirect())
    try:
        no_redirect.open(post, timeout=10)
        raise AssertionError("the sign-in POST did not redirect")
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 302, redirect.read()[:2000]
        login_cookies = redirect.headers.get_all("Set-Cookie") or []
    return form_cookies, login_cookies, page_headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def cookie(cookies: list[str], name: str) -> str:
    found = [c for c in cookies if c.startswith(f"{name}=")]
    assert found, (name, cookies)
    return found[0]


def has_flag(set_cookie: str, flag: str) -> bool:
    return flag.lower() in [part.strip().lower() for part in set_cookie.split(";")]


SERVER_PROCESS = ("manage.py serve in another process shares the test database: PostgreSQL "
                  "(SQLite's test database is in memory)")


@pytest.fixture
def admin(db):
    from orgs import services

    org = acme()
    services.set_member_role(org, "admin", "admin", password=PASSWORD)
    return org


# --- manage.py serve --------------------------------------------------------------------------


@pytest.mark.postgres_only(SERVER_PROCESS)
@pytest.mark.django_db(transaction=True)
def test_https_with_the_self_signed_certificate(admin, tmp_path):
    """Secure cookies and the security headers; no HSTS, which would lock browsers out of a
    self-signed certificate's warning."""
    server = rhsm_helper.start_server(tmp_path / "data")
    try:
        form_cookies, login_cookies, headers = sign_in(server)
    finally:
        rhsm_helper.stop_server(server)
    csrf, session = cookie(form_cookies, "csrftoken"), cookie(login_cookies, "sessionid")
    assert has_flag(csrf, "Secure") and has_flag(session, "Secure"), (csrf, session)
    assert has_flag(session, "HttpOnly") and has_flag(session, "SameSite=Lax")
    assert has_flag(csrf, "SameSite=Lax")
    for name, value in HEADERS.items():
        assert headers.get(name) == value, (name, headers)
    policy = headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "object-src 'none'", "frame-ancestors 'none'", "form-action 'self'"):
        assert directive in policy, policy
    assert "Strict-Transport-Security" not in headers


@pytest.mark.postgres_only(SERVER_PROCESS)
@pytest.mark.django_db(transaction=True)
def test_https_with_a_configured_certificate_sends_hsts(admin, tmp_path):
    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    cert_pem, key_pem = tls.generate(["localhost"])
    (data / "tls" / "sam.crt").write_bytes(cert_pem)
    (data / "tls" / "sam.key").write_bytes(key_pem)
    server = rhsm_helper.start_server(data, env={"SAM_TLS_CERT": str(data / "tls" / "sam.crt"),
                                                 "SAM_TLS_KEY": str(data / "tls" / "sam.key")})
    try:
        form_cookies, login_cookies, headers = sign_in(server)
    finally:
        rhsm_helper.stop_server(server)
    assert "Using self-signed" not in server.log()  # the configured pair was served
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert has_flag(cookie(login_cookies, "sessionid"), "Secure")


@pytest.mark.postgres_only(SERVER_PROCESS)
@pytest.mark.django_db(transaction=True)
def test_behind_a_trusted_proxy(admin, tmp_path):
    """``--no-tls`` behind a proxy in SAM_FORWARDED_ALLOW_IPS: HTTPS as the proxy says it, and
    plain HTTP still works (no Secure cookie the client could not send back)."""
    server = rhsm_helper.start_server(
        tmp_path / "data", args=("--no-tls",),
        env={"SAM_FORWARDED_ALLOW_IPS": "127.0.0.1", "SAM_HSTS_SECONDS": "600"})
    try:
        form_cookies, login_cookies, headers = sign_in(server, {"X-Forwarded-Proto": "https"})
        plain_form, plain_login, plain_headers = sign_in(server)
    finally:
        rhsm_helper.stop_server(server)
    assert headers["Strict-Transport-Security"] == "max-age=600"
    assert has_flag(cookie(form_cookies, "csrftoken"), "Secure")
    assert has_flag(cookie(login_cookies, "sessionid"), "Secure")
    assert "Strict-Transport-Security" not in plain_headers
    assert not has_flag(cookie(plain_form, "csrftoken"), "Secure")
    assert not has_flag(cookie(plain_login, "sessionid"), "Secure")
    assert "Content-Security-Policy" in plain_headers


# --- the development server (plain HTTP) ------------------------------------------------------


def test_plain_http_cookies_are_not_secure(admin, client, settings):
    settings.SECURE_HSTS_SECONDS = 3600  # even when configured: HSTS only on HTTPS responses
    response = client.get("/accounts/login/")
    assert "Strict-Transport-Security" not in response.headers
    assert not response.cookies["csrftoken"]["secure"]
    response = client.post("/accounts/login/", {"username": "admin", "password": PASSWORD})
    assert response.status_code == 302 and not response.cookies["sessionid"]["secure"]
    secure = client.get("/accounts/login/", secure=True)
    assert secure.cookies["csrftoken"]["secure"] is True
    assert secure.headers["Strict-Transport-Security"] == "max-age=3600"


# --- settings and check --deploy --------------------------------------------------------------


def _django(code: str, tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("SAM_TLS_CERT", "SAM_TLS_KEY", "SAM_HSTS_SECONDS")}
    environ.update(SAM_DATA_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, seconds", [
    ({}, "0"),
    ({"SAM_TLS_CERT": "/etc/sam/cert.pem", "SAM_TLS_KEY": "/etc/sam/key.pem"}, "31536000"),
    ({"SAM_TLS_CERT": "/etc/sam/cert.pem", "SAM_HSTS_SECONDS": "0"}, "0"),
    ({"SAM_HSTS_SECONDS": "86400"}, "86400"),
])
def test_hsts_seconds_default_and_setting(tmp_path, env, seconds):
    result = _django("from django.conf import settings; print(settings.SECURE_HSTS_SECONDS)",
                     tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == seconds


@pytest.mark.parametrize("value, message", [("-1", "below the minimum 0"), ("a year", "not an integer")])
def test_hsts_seconds_bad_value_stops_the_start(tmp_path, value, message):
    result = _django("pass", tmp_path, SAM_HSTS_SECONDS=value)
    assert result.returncode != 0 and "SAM_HSTS_SECONDS" in result.stderr and message in result.stderr


def test_check_deploy_for_the_readme_production_setup(tmp_path):
    """README "Security headers": what ``check --deploy`` still says for the production setup,
    each explained there."""
    cert_pem, key_pem = tls.generate(["sam.example.com"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAM_")}
    environ.update(DATABASE_URL="postgres://sam:secret@db.example:5432/sam",
                   REDIS_URL="redis://redis.example:6379/0", SAM_DATA_DIR=str(tmp_path),
                   SAM_ALLOWED_HOSTS="sam.example.com", SAM_TLS_CERT=str(tmp_path / "cert.pem"),
                   SAM_TLS_KEY=str(tmp_path / "key.pem"))
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT,
                            env=environ, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    found = set(re.findall(r"\((security\.W\d+|sam\.\w+)\)", output))
    assert found == {"security.W005", "security.W008", "security.W021"}, output
    readme = (ROOT / "README.md").read_text()
    for warning in found:
        assert f"`{warning}`" in readme, f"{warning} is not explained in the README"
