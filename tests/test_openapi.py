"""The committed OpenAPI schema matches the code, and fuzzing from it finds no server error (R6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orgs import services as orgs
from tests import workers
from tests.scenario import acme, guest, report, subscribe

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "openapi.yaml"


@pytest.mark.postgres_only("docs/openapi.yaml is generated on PostgreSQL: integer ranges "
                           "differ on SQLite")
def test_committed_schema_is_current(tmp_path):
    """CI fails when the code's API differs from docs/openapi.yaml (regenerate with
    ``python manage.py spectacular --file docs/openapi.yaml --validate --fail-on-warn``)."""
    generated = tmp_path / "openapi.yaml"
    subprocess.run([sys.executable, "manage.py", "spectacular", "--file", str(generated),
                    "--validate", "--fail-on-warn"], cwd=ROOT, check=True)
    assert generated.read_text() == COMMITTED.read_text(), (
        "docs/openapi.yaml is out of date: regenerate it (see this test's docstring)")


@pytest.mark.django_db
def test_schema_and_viewers_are_served_without_cdn(client, django_user_model):
    admin = django_user_model.objects.create_user("reader", password="x-long-password-1")
    client.force_login(admin)
    assert client.get("/api/schema/").status_code == 200
    for page in ("/api/docs/", "/api/redoc/"):
        html = client.get(page).content.decode()
        assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_api_fuzzing_from_the_schema(tmp_path):
    """schemathesis against a real server (gunicorn, the test database): no 5xx, and every
    documented response matches the schema (performance.md R6)."""
    org = acme()
    subscribe(org, "VDC", 2)
    report(org, "esx1", ["g1", "g2"])
    guest(org, "g1")
    admin = orgs.set_member_role(org, "fuzz-admin", "admin", password="fuzz-pass-word-1")
    _, token = orgs.create_token(org, "fuzz", "admin", created_by=admin)
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.org_key" = "ACME"\n')
    port = workers.free_port()
    web = workers.start_web(port, SAM_TASKS_EAGER=1)
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
             f"http://127.0.0.1:{port}/api/schema/", "--checks",
             "not_a_server_error,response_schema_conformance", "-H", f"Authorization: Bearer {token}",
             "--max-examples", "10", "--seed", "1", "--generation-deterministic",
             "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
             "--exclude-method", "DELETE"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    finally:
        web.kill()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in web.output(), web.output()[-4000:]
