"""Stored poison: an ancient date is refused at every entry, and ``check_data`` finds and
repairs one that got in before (inserted here with raw SQL, as an old import stored it)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from subscriptions.models import Pool, Subscription
from tests.api_actors import make_actors
from tests.scenario import acme, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

ANCIENT = "0001-01-01T00:00:00+05:00"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    org = acme()
    actors = make_actors(org)
    browser = Client(raise_request_exception=False)
    browser.force_login(get_user_model().objects.get(username="org-admin"))
    return {"org": org, "api": actors.clients["admin"], "browser": browser}


def _rows() -> tuple[int, int]:
    return Subscription.objects.count(), Pool.objects.count()


def _pages(world) -> dict[str, int]:
    """The org's pages that read subscription and pool dates (UI and API)."""
    api, browser = world["api"], world["browser"]
    return {url: client.get(url).status_code for client, url in (
        (browser, "/o/ACME/"), (browser, "/o/ACME/subscriptions/"), (browser, "/o/ACME/pools/"),
        (api, "/api/v1/orgs/ACME/subscriptions/"), (api, "/api/v1/orgs/ACME/pools/"),
    )}


@pytest.mark.parametrize("start", [ANCIENT, "1899-12-31", "10000-01-01", "9999-06-01"])
def test_import_with_an_out_of_range_date_is_refused(world, start):
    body = {"products": [{"sku": "X", "name": "X"}],
            "subscriptions": [{"product": "X", "quantity": 1, "start": start,
                               "end": "2030-01-01", "contract_number": "C-1"}]}
    before = _rows()
    r = world["api"].post("/api/v1/orgs/ACME/import/", body, format="json")
    assert r.status_code == 400, r.content
    assert "start" in json.dumps(r.json())
    upload = SimpleUploadedFile("subs.json", json.dumps(body).encode())
    page = world["browser"].post("/o/ACME/subscriptions/import/", {"file": upload})
    assert page.status_code == 400
    assert _rows() == before


def test_every_entry_refuses_dates_outside_1900_9999(world):
    api, browser = world["api"], world["browser"]
    before = _rows()
    for start, end in ((ANCIENT, None), ("2028-02-29T00:00:00Z", "9999-12-31T00:00:00Z"),
                       ("1899-12-31T23:59:59Z", "2030-01-01T00:00:00Z")):
        body = {"product": "VDC", "quantity": 1, "start": start, **({"end": end} if end else {})}
        r = api.post("/api/v1/orgs/ACME/subscriptions/", body, format="json")
        assert r.status_code == 400, (start, r.content)
    for start in ("0001-01-01T00:00", "1899-12-31T00:00"):
        vdc = world["org"].products.get(sku="VDC")
        page = browser.post("/o/ACME/subscriptions/new/",
                            {"product": vdc.pk, "quantity": 1, "start": start})
        assert page.status_code == 400 and "between 1900-01-01 and 9999-01-01" in page.content.decode()
    assert _rows() == before


def test_leap_day_and_last_year_without_an_end(world):
    api = world["api"]
    r = api.post("/api/v1/orgs/ACME/subscriptions/",
                 {"product": "VDC", "quantity": 1, "start": "2028-02-29T00:00:00Z"}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["end"].startswith("2029-02-28")
    r = api.post("/api/v1/orgs/ACME/subscriptions/",
                 {"product": "VDC", "quantity": 1, "start": "9998-06-01T00:00:00Z"}, format="json")
    assert r.status_code == 400 and "9999-01-01" in json.dumps(r.json())


def _poison(subscription: Subscription) -> None:
    """What an unchecked import stored: 1 BC in PostgreSQL (year 1 at +05:00 is 1 BC in UTC)."""
    with connection.cursor() as cursor:
        for table in ("subscriptions_subscription", "subscriptions_pool"):
            column = "subscription_id" if table.endswith("pool") else "id"
            cursor.execute(f"UPDATE {table} SET start = %s WHERE {column} = %s",
                           [ANCIENT, subscription.pk])


def _check_data(*args) -> str:
    out = io.StringIO()
    call_command("check_data", *args, stdout=out)
    return out.getvalue()


def test_check_data_finds_and_fix_repairs_an_ancient_start(world):
    sub = subscribe(world["org"], "VDC", 2)
    assert _check_data().startswith("check_data: no bad values found")
    assert set(_pages(world).values()) == {200}
    _poison(sub)
    assert 500 in _pages(world).values()  # what the poison does: psycopg cannot read 1 BC

    with pytest.raises(CommandError, match="run check_data --fix"):
        _check_data()
    found = _check_data_lines(fix=False)
    assert {line.split(" start:")[0] for line in found} == {
        f"found: subscriptions_subscription id={sub.pk}",
        *(f"found: subscriptions_pool id={p.pk}" for p in Pool.objects.filter(subscription=sub)
          .only("id"))}
    assert all("BC" in line and "1900-01-01T00:00:00+00:00" in line for line in found)

    fixed = _check_data("--fix")
    assert fixed.count("fixed: ") == 1 + Pool.objects.filter(subscription=sub).count()
    assert _check_data().startswith("check_data: no bad values found")
    assert set(_pages(world).values()) == {200}
    sub.refresh_from_db()
    assert sub.start == datetime(1900, 1, 1, tzinfo=UTC) and sub.end > sub.start


def test_check_data_keeps_periods_ending_after_their_start(world):
    sub = subscribe(world["org"], "VDC", 1)
    with connection.cursor() as cursor:
        cursor.execute('UPDATE subscriptions_subscription SET start = %s, "end" = %s WHERE id = %s',
                       ["0001-01-01T00:00:00+00:00", "0001-06-01T00:00:00+00:00", sub.pk])
    out = _check_data("--fix")
    assert f"subscriptions_subscription id={sub.pk} end:" in out
    sub.refresh_from_db()
    assert sub.start == datetime(1900, 1, 1, tzinfo=UTC)
    assert sub.end == datetime(1900, 1, 2, tzinfo=UTC)


def _check_data_lines(fix: bool) -> list[str]:
    out = io.StringIO()
    try:
        call_command("check_data", *(["--fix"] if fix else []), stdout=out)
    except CommandError:
        pass
    return [line for line in out.getvalue().splitlines() if line.startswith(("found:", "fixed:"))]
