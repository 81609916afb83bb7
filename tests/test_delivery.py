"""Front-end delivery (README "Security headers", "Compression and caching"): content-hashed
static names with long cache lifetimes and gzip after ``collectstatic``, plain names without
it, gzip for HTML pages but never for the APIs or a page that shows a secret, the favicon, and
the 404/403/500 pages inside the site's layout."""

from __future__ import annotations

import gzip
import re

import pytest
from django.core.management import call_command
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.views import defaults

from orgs import services
from tests.scenario import acme

PASSWORD = "a-long-and-secret-pass"
THIRTY_DAYS = 30 * 86400


@pytest.fixture
def org(db):
    org = acme()
    services.set_member_role(org, "admin", "admin", password=PASSWORD)
    services.set_member_role(org, "viewer", "viewer", password=PASSWORD)
    return org


def max_age(response) -> int:
    match = re.search(r"max-age=(\d+)", response.get("Cache-Control", ""))
    assert match, response.get("Cache-Control")
    return int(match.group(1))


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def collected(settings, tmp_path):
    """``collectstatic`` into a fresh STATIC_ROOT, as ``./scripts/demo`` and the image run it."""
    settings.STATIC_ROOT = str(tmp_path / "static")
    call_command("collectstatic", interactive=False, verbosity=0)
    return tmp_path / "static"


def test_collected_static_files_have_hashed_names_long_cache_lifetimes_and_gzip(collected, client):
    page = client.get("/accounts/login/").content.decode()
    links = re.findall(r'(?:href|src)="(/static/sam/[^"]+)"', page)
    assert len(links) == 3, links  # favicon, stylesheet, script
    for link in links:
        assert re.search(r"\.[0-9a-f]{12}\.(css|js|svg)$", link), link
        compressed = client.get(link, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
        assert compressed.status_code == 200
        assert max_age(compressed) >= THIRTY_DAYS and "immutable" in compressed["Cache-Control"]
        assert compressed["Content-Encoding"] == "gzip" and "Accept-Encoding" in compressed["Vary"]
        plain = client.get(link)
        assert "Content-Encoding" not in plain
        original = (collected / link.removeprefix("/static/")).read_bytes()
        assert gzip.decompress(body(compressed)) == body(plain) == original


def test_without_collectstatic_pages_link_plain_names_that_are_served(settings, tmp_path, client):
    (tmp_path / "empty").mkdir()
    settings.STATIC_ROOT = str(tmp_path / "empty")
    page = client.get("/accounts/login/").content.decode()
    assert 'href="/static/sam/sam.css"' in page and 'src="/static/sam/sam.js"' in page
    response = client.get("/static/sam/sam.css")
    assert response.status_code == 200 and b".field" in body(response)
    assert max_age(response) < THIRTY_DAYS  # a plain name may change content: short lifetime


def test_html_pages_are_gzipped_when_asked(org, client):
    client.login(username="admin", password=PASSWORD)
    for path in ("/accounts/login/", f"/o/{org.key}/", f"/o/{org.key}/members/"):
        compressed = client.get(path, HTTP_ACCEPT_ENCODING="gzip")
        assert compressed.status_code == 200, path
        assert compressed["Content-Encoding"] == "gzip" and "Accept-Encoding" in compressed["Vary"]
        text = gzip.decompress(compressed.content).decode()
        assert "</html>" in text
        plain = client.get(path)
        assert "Content-Encoding" not in plain and b"</html>" in plain.content


def test_apis_and_pages_showing_a_secret_are_not_compressed(org, client):
    client.login(username="admin", password=PASSWORD)
    for path in ("/candlepin/status/", f"/api/v1/orgs/{org.key}/", f"/api/v1/orgs/{org.key}/members/"):
        response = client.get(path, HTTP_ACCEPT_ENCODING="gzip")
        assert response.status_code == 200 and "Content-Encoding" not in response, path
    created = client.post(f"/o/{org.key}/tokens/", {"action": "create", "name": "ci", "role": "viewer"},
                          HTTP_ACCEPT_ENCODING="gzip")
    assert created.status_code == 200 and "no-store" in created["Cache-Control"]
    assert "Content-Encoding" not in created and b"sam_" in created.content


def test_favicon(client, settings, tmp_path):
    (tmp_path / "empty").mkdir()
    settings.STATIC_ROOT = str(tmp_path / "empty")
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/sam/favicon.ico"
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and body(icon)[:4] == b"\x00\x00\x01\x00"  # an ICO file
    page = client.get("/accounts/login/").content.decode()
    assert '<link rel="icon" href="/static/sam/favicon.svg" type="image/svg+xml">' in page


def _in_layout(html: str) -> None:
    assert '<header class="top">' in html and "/static/sam/sam.css" in html
    assert 'id="error-page"' in html


def test_error_pages_are_inside_the_layout(org, client):
    client.login(username="viewer", password=PASSWORD)
    missing = client.get("/o/NOPE/")
    assert missing.status_code == 404
    _in_layout(missing.content.decode())
    assert "Page not found" in missing.content.decode()
    assert "viewer" in missing.content.decode()  # the signed-in user, as on every page

    refused = client.post(f"/o/{org.key}/settings/", {})
    assert refused.status_code == 403
    _in_layout(refused.content.decode())
    assert "read-only" in refused.content.decode()

    request = RequestFactory().get("/boom/")
    failed = defaults.server_error(request)
    assert failed.status_code == 500
    _in_layout(failed.content.decode())
    assert "Something went wrong" in render_to_string("500.html")


def test_csrf_failure_page_is_inside_the_layout(org):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    refused = strict.post("/accounts/login/", {"username": "admin", "password": PASSWORD})
    assert refused.status_code == 403
    html = refused.content.decode()
    _in_layout(html)
    assert "nothing was changed" in html and "<style" not in html
