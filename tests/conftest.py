"""Shared test setup.

Tasks run in-process (eager) unless a test starts a real worker (``tests/test_worker.py``).
With ``SAM_FAIL_ON_SKIP=1`` (CI) a skipped test fails the run: CI must prove everything.

``./scripts/test`` runs the suite on PostgreSQL, then the view, API, UI and scenario tests on
SQLite (the embedded default). A test that cannot run on SQLite says why with
``@pytest.mark.postgres_only("reason")``; tests marked ``worker`` (a real Celery worker needs
PostgreSQL and Redis) count as such. On SQLite they are deselected, never skipped.
"""

from __future__ import annotations

import os
import time

import pytest

from sam.celery import app as celery_app


@pytest.fixture(autouse=True)
def eager_tasks(settings):
    """Run enqueued tasks in the test process right after commit."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    """``manage.py serve`` over TLS and a real worker sharing its data directory, for the wire
    test modules (rhsm against the server; their marks: ``rhsm_helper.WIRE_MARKS``). A module
    that needs another server defines its own ``server``."""
    from tests import rhsm_helper

    yield from rhsm_helper.serve_with_worker(tmp_path_factory)


@pytest.fixture(params=["batch", "per_system"])
def resolution_path(request, settings, monkeypatch):
    """Run a test once per resolution path (``SAM_RESOLUTION``): set-based batches with
    per-system fallback, and per-system only. Workers the test starts inherit it."""
    settings.SAM_RESOLUTION = request.param
    monkeypatch.setenv("SAM_RESOLUTION", request.param)
    return request.param


def pytest_configure(config):
    """With Redis the cache outlives a run and the test database's ids restart each run: give
    this run's keys their own prefix (before any cache is opened) so no value crosses over.

    Under pytest-xdist (``-n``) each worker has its own test database (pytest-django) and its own
    Celery queue, so the Celery workers a test starts (``tests/workers.py``, which pass the
    environment on) only run that test's tasks, against that test's database."""
    from django.conf import settings

    if "KEY_PREFIX" in settings.CACHES["default"]:
        settings.CACHES["default"]["KEY_PREFIX"] = f"sam-test-{os.getpid()}-{time.time_ns()}"
    xdist_worker = os.environ.get("PYTEST_XDIST_WORKER")
    if xdist_worker:
        _own_queues(settings, f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{xdist_worker}")


def _own_queues(settings, base: str) -> None:
    """Rename the Celery queues (default, reports, resolution: sam/settings.py) after ``base``,
    here and in the processes the tests start (``SAM_CELERY_QUEUE``, read by their settings)."""
    from kombu import Queue

    renamed = {settings.CELERY_TASK_DEFAULT_QUEUE: base,
               settings.SAM_REPORT_QUEUE: f"{base}.reports",
               settings.SAM_RESOLUTION_QUEUE: f"{base}.resolution"}
    settings.CELERY_TASK_DEFAULT_QUEUE = base
    settings.SAM_REPORT_QUEUE, settings.SAM_RESOLUTION_QUEUE = f"{base}.reports", f"{base}.resolution"
    settings.SAM_QUEUES = tuple(renamed.values())
    settings.CELERY_TASK_QUEUES = [Queue(name, routing_key=name) for name in settings.SAM_QUEUES]
    settings.CELERY_TASK_ROUTES = {
        task: {key: renamed.get(value, value) for key, value in route.items()}
        for task, route in settings.CELERY_TASK_ROUTES.items()}
    celery_app.conf.update(task_default_queue=base, task_queues=settings.CELERY_TASK_QUEUES,
                           task_routes=settings.CELERY_TASK_ROUTES)
    os.environ["SAM_CELERY_QUEUE"] = base


def _on_sqlite() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


def pytest_collection_modifyitems(config, items):
    """On SQLite, deselect the tests that need PostgreSQL (each marker must give its reason)."""
    for item in items:
        marker = item.get_closest_marker("postgres_only")
        if marker is not None and not (marker.args and str(marker.args[0]).strip()):
            raise pytest.UsageError(f"{item.nodeid}: postgres_only needs a reason")
    if not _on_sqlite():
        return
    keep, drop = [], []
    for item in items:
        needs_pg = item.get_closest_marker("postgres_only") or item.get_closest_marker("worker")
        (drop if needs_pg else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SAM_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"SAM_FAIL_ON_SKIP=1: {skipped} skipped test(s) count as failures.",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _no_stray_test_db_sessions(django_db_setup, django_db_blocker):
    """Subprocesses (gunicorn, workers) killed by tests may leave a PostgreSQL session for a
    moment; end them so the test database can always be dropped at the end of the run."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
