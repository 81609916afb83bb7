"""The manifest's surfaces: the native API (/api/v1/orgs/{key}/manifest/) through the fixed
actors, the Candlepin-compatible imports endpoints and their jobs, hostile uploads over HTTP,
and manifest subscriptions read-only in the API."""

from __future__ import annotations

import base64
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from orgs import services as orgs
from orgs.services import create_org
from subscriptions.models import ManifestImport, Pool, Product, Subscription, UpstreamDistributor
from tests import manifests as m
from tests.api_actors import READ, WRITE, make_actors
from tests.manifests import trust_redhat  # noqa: F401 - fixture
from tests.test_manifest_reader import hostile

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/orgs/ACME/manifest/"
SMALL = "katello-manifest_small_modified-2017.zip"  # modified (SIGNATURE_CONFLICT), active until 2038
ORDER = ["viewer", "reporter", "other_admin", "anonymous", "admin"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def actors():
    return make_actors(create_org("ACME", "ACME Corp"))


def upload(name: str = SMALL, blob: bytes | None = None, **fields) -> dict:
    return {"file": SimpleUploadedFile(name, m.data(name) if blob is None else blob,
                                       "application/zip"), **fields}


def stored(org) -> int:
    return (Subscription.objects.filter(org=org).count() + Pool.objects.filter(org=org).count()
            + Product.objects.filter(org=org).count() + UpstreamDistributor.objects.filter(org=org).count()
            + ManifestImport.objects.filter(org=org).count())


def test_permission_matrix(actors):
    cases = [
        ("get", URL, None, READ),
        ("get", f"{URL}history/", None, READ),
        ("post", URL, lambda: upload(force=["SIGNATURE_CONFLICT"]), {**WRITE, "admin": 200}),
        ("delete", URL, None, {**WRITE, "admin": 200}),
    ]
    for method, url, body, expected in cases:
        got = {}
        for actor in ORDER:
            client = actors.clients[actor]
            data = body() if body else None
            got[actor] = getattr(client, method)(url, data, format="multipart" if data else None).status_code
        assert got == expected, (method, url, got)


def test_import_status_history_and_delete(actors):
    admin = actors.clients["admin"]
    assert admin.get(URL).json() | {"last_import": None} == {
        "imported": False, "distributor": None, "expires": None, "expired": False, "subscriptions": [],
        "last_import": None}
    r = admin.post(URL, upload(), format="multipart")
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "manifest_conflict"
    assert error["conflicts"] == [{"key": "SIGNATURE_CONFLICT", "message": error["conflicts"][0]["message"],
                                   "forced": False}]
    assert error["record"]["status"] == "FAILURE" and error["record"]["signature"] == "untrusted"
    r = admin.post(f"{URL}?force=SIGNATURE_CONFLICT", upload(), format="multipart")
    assert r.status_code == 200, r.json()
    body = r.json()
    assert (body["status"], body["file_name"], body["principal"]) == ("SUCCESS", SMALL, "org-admin")
    assert body["counts"]["created"] == 1 and "PRIVATE KEY" not in str(body)
    status = admin.get(URL).json()
    assert status["imported"] and status["distributor"]["uuid"] == "2f5788ef-1ea3-40c5-9af8-9b9e776705e7"
    assert status["expires"].startswith("2018-11-21") and status["expired"] is True
    assert [(s["product"], s["quantity"], s["end"][:4]) for s in status["subscriptions"]] == [
        ("RH2262474", 1, "2038")]
    r = admin.post(URL, upload(force=["SIGNATURE_CONFLICT"]), format="multipart")
    assert r.status_code == 409 and [c["key"] for c in r.json()["error"]["conflicts"]] == [
        "SIGNATURE_CONFLICT", "MANIFEST_SAME"]
    assert r.json()["error"]["conflicts"][0]["forced"] is True
    r = admin.delete(URL)
    assert r.status_code == 200 and r.json()["status"] == "DELETE"
    assert admin.delete(URL).status_code == 404
    history = admin.get(f"{URL}history/").json()
    assert [h["status"] for h in history["results"]] == ["DELETE", "FAILURE", "SUCCESS", "FAILURE"]
    assert "PRIVATE KEY" not in str(history) and "BEGIN CERTIFICATE" not in str(history)


def test_signature_valid_with_the_trusted_red_hat_certificate(actors, trust_redhat):  # noqa: F811
    r = actors.clients["admin"].post(URL, upload("fam-manifest_foreman-ansible-modules.zip"),
                                     format="multipart")
    assert r.status_code == 200
    assert (r.json()["signature"], r.json()["status"]) == ("valid", "SUCCESS_WITH_WARNING")  # ended 2019
    assert "Red Hat Candlepin Authority" in r.json()["signer"]


@pytest.mark.parametrize("case", ["zip bomb", "entry ../x", "inner ../x", "missing signature", "truncated"])
def test_hostile_uploads_are_400_and_store_nothing(actors, case):
    admin = actors.clients["admin"]
    r = admin.post(f"{URL}?force=SIGNATURE_CONFLICT", upload(blob=hostile()[case]), format="multipart")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["code"] == "invalid_manifest" and r.json()["error"]["message"]
    assert stored(actors.org) == 0


def test_bad_requests_are_4xx(actors, settings):
    admin = actors.clients["admin"]
    assert admin.post(URL, {"force": "SIGNATURE_CONFLICT"}, format="multipart").status_code == 400
    r = admin.post(URL, upload(force=["EVERYTHING"]), format="multipart")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_force"
    assert admin.post(URL, {"a": 1}, format="json").status_code == 415
    settings.SAM_MANIFEST_MAX_BYTES = 64 * 1024
    r = admin.post(URL, upload(force=["SIGNATURE_CONFLICT"]), format="multipart")
    assert r.status_code == 413
    assert stored(actors.org) == 0


def test_manifest_subscriptions_are_read_only_in_the_api(actors):
    admin = actors.clients["admin"]
    admin.post(f"{URL}?force=SIGNATURE_CONFLICT", upload(), format="multipart")
    sub = Subscription.objects.get(org=actors.org)
    url = f"/api/v1/orgs/ACME/subscriptions/{sub.uuid}/"
    body = admin.get(url).json()
    assert body["managed"] is True and body["upstream_entitlement_id"] == "8a85f9875fdf2c93015fdf4f83650dec"
    for r in (admin.patch(url, {"quantity": 9}, format="json"), admin.delete(url)):
        assert r.status_code == 400 and r.json()["error"]["code"] == "manifest_managed"
    assert Subscription.objects.get(org=actors.org).quantity == 1


# --- Candlepin-compatible endpoints ------------------------------------------------------------

def basic(user: str, password: str) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def owner():
    org = create_org("ACME", "ACME Corp")
    orgs.set_member_role(org, "admin", "admin", password="admin-pass-1")
    orgs.set_member_role(org, "viewer", "viewer", password="viewer-pass-1")
    orgs.set_member_role(org, "virtwho", "reporter", password="reporter-pass-1")
    return org


def katello_upload() -> dict:
    """Katello's multipart field is ``import``."""
    return {"import": SimpleUploadedFile(SMALL, m.data(SMALL))}


ADMIN, VIEWER, REPORTER = basic("admin", "admin-pass-1"), basic("viewer", "viewer-pass-1"), \
    basic("virtwho", "reporter-pass-1")


@pytest.mark.parametrize("prefix", ["/candlepin", "/rhsm"])
def test_candlepin_import_async_answers_a_job(client, owner, prefix):
    url = f"{prefix}/owners/ACME/imports/async"
    r = client.post(f"{url}?force=SIGNATURE_CONFLICT", katello_upload(), **ADMIN)
    assert r.status_code == 200, r.content
    job = r.json()
    assert (job["key"], job["state"], job["done"], job["owner"]) == ("ImportJob", "FINISHED", True, "ACME")
    assert STAMP.match(job["created"]) and job["statusPath"] == f"/jobs/{job['id']}"
    polled = client.get(f"{prefix}/jobs/{job['id']}", **VIEWER).json()
    assert polled["state"] == "FINISHED" and polled["resultData"]["status"] == "SUCCESS"
    assert client.get(f"{prefix}/jobs/{job['id']}", **REPORTER).status_code == 404
    # The same again: a job that FAILED with Candlepin's message naming the conflict.
    again = client.post(f"{url}?force=SIGNATURE_CONFLICT", katello_upload(), **ADMIN).json()
    assert again["state"] == "FAILED"
    assert again["resultData"] == "Import failed. The following conflicts were found: [ MANIFEST_SAME ]"
    records = client.get(f"{prefix}/owners/ACME/imports", **VIEWER).json()
    assert [(r["status"], r["conflicts"]) for r in records] == [
        ("FAILURE", ["SIGNATURE_CONFLICT", "MANIFEST_SAME"]), ("SUCCESS", ["SIGNATURE_CONFLICT"])]
    assert records[1]["upstreamConsumer"]["uuid"] == "2f5788ef-1ea3-40c5-9af8-9b9e776705e7"
    undo = client.delete(f"{prefix}/owners/ACME/imports", **ADMIN).json()
    assert (undo["key"], undo["state"]) == ("UndoImportsJob", "FINISHED")
    assert not Subscription.objects.filter(org=owner).exists()
    assert client.delete(f"{prefix}/owners/ACME/imports", **ADMIN).status_code == 404


def test_candlepin_signature_failure_is_a_failed_job(client, owner):
    r = client.post("/candlepin/owners/ACME/imports/async", katello_upload(), **ADMIN)
    job = r.json()
    assert r.status_code == 200 and job["state"] == "FAILED"
    assert "SIGNATURE_CONFLICT" in job["resultData"]
    assert not Subscription.objects.filter(org=owner).exists()


def test_candlepin_imports_refuse_what_they_must(client, owner):
    url = "/candlepin/owners/ACME/imports/async?force=SIGNATURE_CONFLICT"
    post = lambda auth, blob=None: client.post(  # noqa: E731
        url, {"import": SimpleUploadedFile("m.zip", m.data(SMALL) if blob is None else blob)}, **auth)
    assert post(VIEWER).status_code == 403
    assert post(REPORTER).status_code == 404
    assert post({}).status_code == 401
    assert client.post("/candlepin/owners/NOPE/imports/async", **ADMIN).status_code == 404
    for case in ("zip bomb", "entry ../x", "missing signature", "truncated"):
        r = post(ADMIN, hostile()[case])
        assert r.status_code == 400 and r.json()["displayMessage"]
    assert client.post(url, data=b"junk", content_type="multipart/form-data; boundary=x",
                       **ADMIN).status_code == 400
    assert client.post(url, **ADMIN).status_code == 400  # no file
    assert client.post("/candlepin/owners/ACME/imports", **ADMIN).status_code == 405  # gone in Candlepin
    assert client.get("/candlepin/owners/ACME/imports", **REPORTER).status_code == 404
    assert client.delete("/candlepin/owners/ACME/imports", **VIEWER).status_code == 403
    assert client.post(url + "&force=NOPE", {"import": SimpleUploadedFile("m.zip", m.data(SMALL))},
                       **ADMIN).status_code == 400
    assert not ManifestImport.objects.filter(org=owner).exists()


@pytest.mark.worker
def test_candlepin_import_job_runs_on_a_real_worker(client, owner):
    """The job row is created in the request (CREATED), a Celery worker imports it, the client
    polls ``/jobs/{id}`` until FINISHED, as virt-who polls a check-in job."""
    from tests import workers

    workers.require_services()
    workers.flush_broker()
    proc = workers.start_worker()
    try:
        with workers.tasks_to_broker():
            r = client.post("/candlepin/owners/ACME/imports/async?force=SIGNATURE_CONFLICT", katello_upload(),
                            **ADMIN)
            job = r.json()
            assert r.status_code == 200 and job["state"] in ("CREATED", "RUNNING", "FINISHED")
            workers.wait_until(lambda: client.get(f"/candlepin/jobs/{job['id']}", **VIEWER).json()["state"]
                               == "FINISHED", "manifest job finished by the worker")
    finally:
        proc.kill()
    workers.assert_clean(proc)
    assert Subscription.objects.filter(org=owner, managed=True).count() == 1
    assert ManifestImport.objects.get(uuid=job["id"]).payload is None  # the parsed copy is gone
