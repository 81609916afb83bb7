"""The beat schedule run in-process for the embedded default (sam/beat.py), without any
``celery beat``: the same entries as sam/celery.py on their schedules, on a clock the test moves
forward (never sleeping), exactly one runner per data directory, and a real ``manage.py serve``
with two worker processes on the embedded default (SQLite, no broker) that revokes an expired
temporary entitlement and records a coverage snapshot by itself.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from orgs.models import System
from sam import beat
from sam.celery import app as celery_app
from subscriptions.models import CoverageSnapshot, Entitlement, Pool
from tests import rhsm_helper
from tests.scenario import acme, ents, guest, subscribe

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = list(celery_app.conf.beat_schedule)


class Clock:
    """The scheduler's clock, which the test moves forward. The domain keeps the real time:
    the test ages the data instead (as if the days had passed)."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock():
    # hh:06 of the current hour: the quarter-hourly entry is next due at hh:15, the hourly one
    # (minute 5) at the next hour, the nightly ones later.
    return Clock(datetime.now(UTC).replace(minute=6, second=0, microsecond=0))


def test_every_beat_schedule_entry_is_run(tmp_path):
    """The runner reads beat_schedule itself: an entry another feature adds is run too."""
    runner = beat.InProcessBeat(tmp_path)
    assert runner.acquire()
    try:
        assert [e.name for e in runner.entries] == ENTRIES
        assert {e.task for e in runner.entries} == {
            spec["task"] for spec in celery_app.conf.beat_schedule.values()}
    finally:
        runner.release()


@pytest.mark.django_db(transaction=True)
def test_the_schedule_runs_on_the_runners_clock(clock, tmp_path):
    runner = beat.InProcessBeat(tmp_path, clock=clock)
    assert runner.acquire()
    try:
        assert runner.tick()[0] == []  # new entries count from now, as celery beat's do
        org = acme()
        subscribe(org, "RHEL-4G", 1)
        g3 = guest(org, "g3")  # no hypervisor reports it: a temporary entitlement for 7 days
        (temporary,) = ents(g3)
        assert temporary.pool.type == Pool.Type.UNMAPPED_GUEST
        assert temporary.end - timezone.now() > timedelta(days=6)

        clock.advance(minutes=8)  # hh:14: only the every-minute requeue is due
        ran, wait = runner.tick()
        assert ran == ["requeue-waiting-reports"] and 0 < wait <= 60
        clock.advance(minutes=1)  # hh:15: the quarter-hourly expiry runs, nothing has expired
        assert runner.tick()[0] == ["expire-unmapped-entitlements", "requeue-waiting-reports"]
        assert Entitlement.objects.filter(pk=temporary.pk).exists()
        assert not CoverageSnapshot.objects.exists()

        # Eight days later: the temporary entitlement has ended, the guest's window has passed,
        # and every entry fell due meanwhile: each runs once.
        Entitlement.objects.filter(pk=temporary.pk).update(end=timezone.now() - timedelta(minutes=1))
        System.objects.filter(pk=g3.pk).update(registered_at=timezone.now() - timedelta(days=8))
        clock.advance(days=8)
        assert runner.tick()[0] == ENTRIES
        assert not Entitlement.objects.filter(pk=temporary.pk).exists()
        snapshot = CoverageSnapshot.objects.get(org=org)
        assert snapshot.day == timezone.localdate()
        assert snapshot.guests_covered == 1  # g3, past the window: a physical system now
        assert runner.tick()[0] == []
    finally:
        runner.release()

    # A restart keeps the schedule ($SAM_DATA_DIR/beat-schedule.json): nothing runs twice, and
    # what fell due while sam was stopped runs once at the next start.
    saved = json.loads((tmp_path / beat.STATE_NAME).read_text())
    assert set(saved) == set(ENTRIES)
    again = beat.InProcessBeat(tmp_path, clock=clock)
    assert again.acquire()
    try:
        assert again.tick()[0] == []
        clock.advance(days=1)
        assert again.tick()[0] == ENTRIES
        assert CoverageSnapshot.objects.get(org=org).recorded > snapshot.recorded
    finally:
        again.release()


@pytest.mark.django_db(transaction=True)
def test_a_failing_task_is_logged_and_the_others_still_run(clock, tmp_path, monkeypatch, caplog):
    from subscriptions import coverage

    def broken(day=None):
        raise RuntimeError("snapshot store unavailable")

    monkeypatch.setattr(coverage, "record_all", broken)
    runner = beat.InProcessBeat(tmp_path, clock=clock)
    assert runner.acquire()
    try:
        runner.tick()
        clock.advance(days=1)
        assert runner.tick()[0] == ENTRIES  # the failed one counts as run, like celery beat
        assert "record-coverage-snapshots" in caplog.text and "snapshot store unavailable" in caplog.text
        assert runner.tick()[0] == []
    finally:
        runner.release()


@pytest.mark.django_db(transaction=True)
def test_only_one_runner_per_data_directory(clock, tmp_path):
    first = beat.InProcessBeat(tmp_path, clock=clock)
    second = beat.InProcessBeat(tmp_path, clock=clock)
    assert first.acquire() and first.acquire()  # idempotent for the holder
    try:
        assert not second.acquire()
        first.tick()
        second.tick()
        clock.advance(days=1)
        assert second.tick() == ([], second.retry)  # a candidate runs nothing
        assert first.tick()[0] == ENTRIES
    finally:
        first.release()
    assert second.acquire()  # the holder went away: the candidate takes over
    second.release()


def test_candidate_threads_take_over_from_each_other(tmp_path):
    """Two candidate threads (as in two ``serve`` worker processes): one holds the lock, the
    other waits; when the holder stops, the other becomes the runner."""
    runners = [beat.InProcessBeat(tmp_path, retry=0.05) for _ in range(2)]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=r.run_forever, args=(s,), daemon=True)
               for r, s in zip(runners, stops, strict=True)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.holds_lock for r in runners):
            time.sleep(0.02)
        time.sleep(0.3)  # the other candidate has tried several times meanwhile
        assert [r.holds_lock for r in runners].count(True) == 1
        holder = next(i for i, r in enumerate(runners) if r.holds_lock)
        stops[holder].set()
        threads[holder].join(timeout=10)
        other = runners[1 - holder]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not other.holds_lock:
            time.sleep(0.02)
        assert other.holds_lock and not runners[holder].holds_lock
    finally:
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(timeout=10)


# --- a real server on the embedded default ----------------------------------------------------


def _embedded_env(data_dir: Path) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "SAM_TASKS_EAGER", "SAM_BEAT_IN_PROCESS")
               and not k.startswith(("SAM_TLS", "SAM_BIND"))}
    environ.update(SAM_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return environ


def _manage(data_dir: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=_embedded_env(data_dir),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_serve_on_the_embedded_default_runs_the_schedule_in_one_worker(tmp_path):
    """No beat process, no broker: ``manage.py serve --workers 2`` on SQLite. The demo's new-vm01
    holds a temporary entitlement; its lifetime is made to have passed and the schedule file
    says every entry last ran two days ago (time moved forward while sam was stopped). At start
    exactly one worker takes the schedule and runs what fell due."""
    data = tmp_path / "data"
    _manage(data, "migrate", "--noinput")
    _manage(data, "seed_demo")
    db = sqlite3.connect(data / "sam.sqlite3")
    try:
        past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
        temporary = db.execute(
            "SELECT e.id FROM subscriptions_entitlement e JOIN subscriptions_pool p ON p.id = e.pool_id "
            "WHERE p.type = ?", [Pool.Type.UNMAPPED_GUEST.value]).fetchall()
        assert len(temporary) == 1
        db.execute('UPDATE subscriptions_entitlement SET "end" = ? WHERE id = ?', [past, temporary[0][0]])
        today = timezone.localdate().isoformat()
        db.execute("DELETE FROM subscriptions_coveragesnapshot WHERE day = ?", [today])
        db.commit()
    finally:
        db.close()
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    (data / beat.STATE_NAME).write_text(json.dumps({name: two_days_ago for name in ENTRIES}))

    port = rhsm_helper.free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            cwd=ROOT, env=_embedded_env(data), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = rhsm_helper.Server(process=process, port=port, data_dir=data, log_path=log_path)

    def state() -> tuple[int, int]:
        with sqlite3.connect(data / "sam.sqlite3") as check:
            left = check.execute("SELECT COUNT(*) FROM subscriptions_entitlement WHERE id = ?",
                                 [temporary[0][0]]).fetchone()[0]
            snapshots = check.execute("SELECT COUNT(*) FROM subscriptions_coveragesnapshot WHERE day = ?",
                                      [today]).fetchone()[0]
        return left, snapshots

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and state() != (0, 1):
            assert process.poll() is None, server.log()[-4000:]
            time.sleep(0.5)
        assert state() == (0, 1), server.log()[-4000:]
        time.sleep(1)  # both workers have booted and tried the lock by now
        assert server.log().count("Booting worker") == 2
    finally:
        rhsm_helper.stop_server(server)
    output = server.log()
    assert output.count("In-process beat: process") == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    saved = json.loads((data / beat.STATE_NAME).read_text())
    assert all(datetime.fromisoformat(saved[name]) > datetime.now(UTC) - timedelta(minutes=5)
               for name in ENTRIES)


def _period_seconds(schedule) -> float:
    """Seconds between two runs of a beat schedule (evenly spaced crontabs, or an interval)."""
    if isinstance(schedule, int | float):
        return float(schedule)
    if hasattr(schedule, "run_every"):
        return schedule.run_every.total_seconds()
    assert len(schedule.day_of_week) == 7 and len(schedule.day_of_month) == 31
    return 86400 / (len(schedule.hour) * len(schedule.minute))


def test_every_beat_entry_expires_within_its_period():
    """A sweep still queued when the next one is due is dropped, not run twice in a row."""
    for name, spec in celery_app.conf.beat_schedule.items():
        expires = spec.get("options", {}).get("expires")
        assert expires is not None, name
        assert 0 < expires <= _period_seconds(spec["schedule"]), name


def test_every_task_has_time_limits_below_the_visibility_timeout():
    from django.conf import settings

    for name, task in celery_app.tasks.items():
        if name.startswith("celery."):
            continue
        soft = task.soft_time_limit or celery_app.conf.task_soft_time_limit
        hard = task.time_limit or celery_app.conf.task_time_limit
        assert soft and hard and soft < hard < settings.CELERY_VISIBILITY_TIMEOUT, name


def test_time_limits_out_of_order_stop_the_process(tmp_path):
    environ = {**os.environ, "SAM_DATA_DIR": str(tmp_path), "SAM_TASK_SOFT_TIME_LIMIT": "3000",
               "SAM_TASK_TIME_LIMIT": "2000"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=Path(__file__).parent.parent,
                            env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SAM_TASK_SOFT_TIME_LIMIT" in result.stderr
