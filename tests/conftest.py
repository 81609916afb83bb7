"""Shared test setup.

Tasks run in-process (eager) unless a test starts a real worker (``tests/test_worker.py``).
With ``SAM_FAIL_ON_SKIP=1`` (CI) a skipped test fails the run: CI must prove everything.
"""

from __future__ import annotations

import os

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
