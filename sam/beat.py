"""The periodic tasks of the embedded default, run inside the process that serves sam.

Without ``REDIS_URL`` there is no worker and no ``celery beat``: the serving process
(``manage.py runserver``, every worker process of ``manage.py serve``) runs the entries of
``sam.celery.app.conf.beat_schedule`` itself -- the same tasks on the same schedules, whatever
other features add there. Exactly one process of an installation runs them: the one holding an
exclusive ``flock`` on ``$SAM_DATA_DIR/beat.lock``. The others stay candidates and try again
every ``CANDIDATE_RETRY`` seconds; the kernel drops the lock of a process that exits, so another
takes over. Like ``celery beat``'s schedule file, ``$SAM_DATA_DIR/beat-schedule.json`` keeps when
each entry last ran: an entry that fell due while sam was stopped runs once at the next start.

The clock is a parameter (``InProcessBeat(clock=...)``), so tests move time forward instead of
sleeping. ``manage.py run_sweeps`` runs every entry once through ``run_task`` below.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.schedules import BaseSchedule, maybe_schedule
from django.db import connections

log = logging.getLogger(__name__)

LOCK_NAME = "beat.lock"
STATE_NAME = "beat-schedule.json"
CANDIDATE_RETRY = 15.0  # seconds between a standby process's attempts at the lock
MAX_SLEEP = 60.0  # re-check at least this often (a changed clock, a schedule file edited by hand)


@dataclass
class Entry:
    """One ``beat_schedule`` entry, with a schedule that reads the runner's clock."""

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple
    kwargs: dict
    last_run_at: datetime | None = None


def periodic_entries(app, clock: Callable[[], datetime] | None = None) -> list[Entry]:
    """The entries of ``app.conf.beat_schedule`` in their order, schedules reading ``clock``."""
    entries = []
    for name, spec in app.conf.beat_schedule.items():
        schedule = copy.copy(maybe_schedule(spec["schedule"], spec.get("relative", False), app=app))
        schedule.app = app
        if clock is not None:
            schedule.nowfun = clock
        entries.append(Entry(name=name, task=spec["task"], schedule=schedule,
                             args=tuple(spec.get("args", ())), kwargs=dict(spec.get("kwargs", {}))))
    return entries


def run_task(app, entry: Entry) -> Any:
    """Run one periodic task here and now, as a worker would (eagerly, traced); its result.

    Exceptions propagate. Tasks it enqueues go where the settings send them (in this process in
    the embedded default, to the workers otherwise).
    """
    if entry.task not in app.tasks:  # the apps' tasks modules are imported lazily
        app.autodiscover_tasks(force=True)
    task = app.tasks[entry.task]
    return task.apply(args=entry.args, kwargs=entry.kwargs, throw=True).result


class InProcessBeat:
    """A candidate runner of the beat schedule; ``run_forever`` is its thread's body."""

    def __init__(self, data_dir: Path | str, *, app=None, clock: Callable[[], datetime] | None = None,
                 retry: float = CANDIDATE_RETRY):
        if app is None:
            from sam.celery import app
        self.app = app
        self.clock = clock or app.now
        self.data_dir = Path(data_dir)
        self.retry = retry
        self.entries: list[Entry] = []
        self._lock_file = None

    # --- the one runner per installation ---------------------------------------------------

    @property
    def holds_lock(self) -> bool:
        return self._lock_file is not None

    def acquire(self) -> bool:
        """Take the installation's runner lock if it is free (never waits)."""
        if self._lock_file is not None:
            return True
        handle = open(self.data_dir / LOCK_NAME, "a")  # kept open while this process runs
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        self.entries = periodic_entries(self.app, self.clock)
        self._load_state()
        log.info("In-process beat: process %s runs the periodic tasks (%s); lock %s",
                 os.getpid(), ", ".join(e.name for e in self.entries), self.data_dir / LOCK_NAME)
        return True

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # --- the schedule -------------------------------------------------------------------------

    def tick(self) -> tuple[list[str], float]:
        """Run every entry that is due now; ``(names run, seconds until the next check)``.

        Only the lock holder runs anything. An entry that fails is logged and counts as run,
        as in ``celery beat``: it runs again when next due, not in a loop.
        """
        if not self.holds_lock:
            return [], self.retry
        ran: list[str] = []
        wait = MAX_SLEEP
        for entry in self.entries:
            if entry.last_run_at is None:  # new entry: counted from now, as celery beat does
                entry.last_run_at = self.clock()
            due, next_check = entry.schedule.is_due(entry.last_run_at)
            if due:
                entry.last_run_at = self.clock()
                try:
                    run_task(self.app, entry)
                except Exception:
                    log.exception("In-process beat: %s (%s) failed", entry.name, entry.task)
                ran.append(entry.name)
                due, next_check = entry.schedule.is_due(entry.last_run_at)
            wait = min(wait, max(float(next_check), 0.0))
        if ran:
            self._save_state()
        return ran, wait

    def run_forever(self, stop: threading.Event) -> None:
        """Stay a candidate until ``stop``; run the schedule while holding the lock."""
        try:
            while not stop.is_set():
                if not self.acquire():
                    stop.wait(self.retry)
                    continue
                wait = MAX_SLEEP
                try:
                    _, wait = self.tick()
                except Exception:  # e.g. the schedule file cannot be written: keep going
                    log.exception("In-process beat: tick failed")
                finally:
                    connections.close_all()  # this thread's connections only
                stop.wait(max(wait, 1.0))
        finally:
            self.release()

    # --- when each entry last ran ----------------------------------------------------------

    def _load_state(self) -> None:
        try:
            saved = json.loads((self.data_dir / STATE_NAME).read_text())
        except (OSError, ValueError):
            saved = {}
        for entry in self.entries:
            entry.last_run_at = None
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entry.last_run_at = datetime.fromisoformat(saved[entry.name])
            if entry.last_run_at is not None and entry.last_run_at.tzinfo is None:
                entry.last_run_at = None  # not written by this module: start afresh

    def _save_state(self) -> None:
        state = {e.name: e.last_run_at.isoformat() for e in self.entries if e.last_run_at}
        path = self.data_dir / STATE_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, path)


_started: InProcessBeat | None = None


def start_in_background() -> InProcessBeat | None:
    """Make this serving process a candidate runner (once), when ``SAM_BEAT_IN_PROCESS`` is on.

    Called where the WSGI application is loaded (``sam/wsgi.py``): in ``runserver``'s serving
    process and in each ``serve`` worker process, never in gunicorn's master.
    """
    global _started
    from django.conf import settings

    if not settings.SAM_BEAT_IN_PROCESS or _started is not None:
        return _started
    _started = InProcessBeat(settings.DATA_DIR)
    thread = threading.Thread(target=_started.run_forever, args=(threading.Event(),),
                              name="sam-beat", daemon=True)
    thread.start()
    return _started
