"""REST API v1: activation keys, through the fixed actors (admins write, viewers read)."""

from __future__ import annotations

import pytest

from orgs.models import ActivationKey
from subscriptions.models import Pool
from tests.api_actors import READ, WRITE, make_actors
from tests.scenario import acme, subscribe
from tests.test_api_orgs import check

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/ACME/activation-keys/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def actors():
    return make_actors(acme())


def test_matrix_activation_keys(actors):
    subscribe(actors.org, "RHEL-4G", 3)
    pool = Pool.objects.get(org=actors.org, product__sku="RHEL-4G", type="NORMAL")
    check(actors, "get", URL, READ)
    created = check(actors, "post", URL, {**WRITE, "admin": 201},
                    {"name": "rhel", "auto_attach": True, "release_ver": "9.4",
                     "pools": [{"pool": str(pool.uuid), "quantity": 1}]})["admin"].json()
    assert created["pools"] == [{"pool": str(pool.uuid), "quantity": 1}]
    detail = f"{URL}{created['uuid']}/"
    check(actors, "get", detail, READ)
    changed = check(actors, "patch", detail, {**WRITE, "admin": 200},
                    {"service_level": "Premium", "pools": []})["admin"].json()
    assert changed["service_level"] == "Premium" and changed["pools"] == []
    assert changed["release_ver"] == "9.4"  # absent fields stay
    check(actors, "delete", detail, {**WRITE, "admin": 204})
    assert not ActivationKey.objects.exists()


def test_bad_activation_keys_are_400(actors):
    admin = actors.clients["admin"]
    assert admin.post(URL, {"name": "k"}, format="json").status_code == 201
    assert admin.post(URL, {"name": "k"}, format="json").status_code == 400  # duplicate
    assert admin.post(URL, {"name": ""}, format="json").status_code == 400
    assert admin.post(URL, {"name": "a,b"}, format="json").status_code == 400
    other_pool = "00000000-0000-4000-8000-000000000001"
    response = admin.post(URL, {"name": "p", "pools": [{"pool": other_pool}]}, format="json")
    assert response.status_code == 400 and "does not exist" in response.content.decode()
    assert not ActivationKey.objects.filter(name="p").exists()
