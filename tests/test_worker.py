"""Background re-resolution through a real Celery worker process (Redis broker, PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from hypervisors import services as mapping
from orgs.models import System
from sam.celery import app as celery_app
from subscriptions.models import Entitlement, Pool
from tests.scenario import acme, guest, report, subscribe

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60  # seconds: generous for a loaded 2-core CI machine; typical is well under 2 s


def _db_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A `celery -A sam worker` subprocess on the test database, and non-eager sending here."""
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.fail("the worker test needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    env = dict(os.environ, DATABASE_URL=_db_url(), REDIS_URL=settings.REDIS_URL,
               SAM_TASKS_EAGER="0", SAM_DATA_DIR=str(settings.DATA_DIR))
    log = open(tmp_path / "worker.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "sam", "worker", "--pool=prefork", "--concurrency=2",
         "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    celery_app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    try:
        _wait_for_ready(process, log)
        yield process
    finally:
        celery_app.conf.task_always_eager = True
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        assert "Traceback" not in output, output[-4000:]


def _wait_for_ready(process, log) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        log.seek(0)
        if "ready." in log.read():
            return
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"worker exited early:\n{log.read()[-4000:]}")
        time.sleep(0.2)
    pytest.fail("worker did not become ready")


def _wait(condition, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < WAIT:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"not within {WAIT} s: {what}")


def _entitled_from(system: System, host: System) -> bool:
    return Entitlement.objects.filter(system=system, pool__requires_host=host).exists()


def test_worker_reentitles_moved_guest(worker):
    org = acme()
    subscribe(org, "VDC", 2)
    esx1 = report(org, "esx1", ["g1"])
    esx2 = report(org, "esx2", [])
    g1 = guest(org, "g1")
    # Registration enqueued the resolution; nothing ran in this process.
    _wait(lambda: _entitled_from(g1, esx1), "g1 entitled from esx1 after registration")

    mapping.set_guest_list(org, esx1, [])
    mapping.set_guest_list(org, esx2, ["g1"])
    # No other call: the worker re-resolves the moved guest on its own.
    seconds = _wait(lambda: _entitled_from(g1, esx2) and not _entitled_from(g1, esx1),
                    "g1 moved to esx2's derived pool")
    assert seconds < WAIT
    assert Entitlement.objects.filter(system=esx2, pool__type=Pool.Type.NORMAL).count() == 1
    assert System.objects.get(pk=g1.pk).current_host_id == esx2.id
