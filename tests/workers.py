"""Real processes for integration tests: Celery worker and beat, a web server, a Redis.

Every process runs against the pytest database (PostgreSQL) and is killed with its process
group when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60  # seconds: generous for a loaded 2-core CI machine


def db_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_services() -> None:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.fail("this test needs DATABASE_URL (PostgreSQL) and REDIS_URL")


class Process:
    """A subprocess in its own session with its output in a temp file."""

    def __init__(self, args: list[str], env: dict, ready: str | None = None):
        self.log_path = Path(tempfile.mkstemp(prefix="sam-proc-", suffix=".log")[1])
        self.log = open(self.log_path, "w+")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        if ready:
            self.wait_for_output(ready)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                pytest.fail(f"process exited early:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        pytest.fail(f"process not ready ({text!r}):\n{self.output()[-4000:]}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()


def service_env(**overrides) -> dict:
    env = dict(os.environ, DATABASE_URL=db_url(), REDIS_URL=settings.REDIS_URL or "",
               SAM_TASKS_EAGER="0", SAM_DATA_DIR=str(settings.DATA_DIR), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def start_worker(concurrency: int = 2, queues: tuple[str, ...] = (), **env) -> Process:
    """A worker on every queue (reports, resolution, the rest), or only on ``queues``."""
    only = ["-Q", ",".join(queues)] if queues else []
    return Process([sys.executable, "-m", "celery", "-A", "sam", "worker", "--pool=prefork",
                    f"--concurrency={concurrency}", "-l", "INFO", "--without-gossip",
                    "--without-mingle", "--without-heartbeat", *only], service_env(**env),
                   ready="ready.")


def start_beat(**env) -> Process:
    schedule = Path(tempfile.mkdtemp(prefix="sam-beat-")) / "schedule"
    return Process([sys.executable, "-m", "celery", "-A", "sam", "beat", "-l", "INFO",
                    "--schedule", str(schedule)], service_env(**env), ready="beat: Starting")


def start_web(port: int, **env) -> Process:
    """gunicorn on plain HTTP (the HTTPS server is tested in tests/test_serve.py)."""
    proc = Process([sys.executable, "-m", "gunicorn", "sam.wsgi:application", "-b",
                    f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", "4"],
                   service_env(**env))
    wait_until(lambda: _answers(port), "web server answers")
    return proc


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_redis(port: int) -> Process:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed for this test")
    proc = Process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no"], dict(os.environ), ready="Ready to accept connections")
    return proc


def flush_broker() -> None:
    """Drop the tasks waiting in this run's queue (only its own: pytest-xdist workers share the
    Redis database, each with its own queue, see tests/conftest.py)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    # kombu keeps a queue as a list per priority: "sam", "sam\x06\x163", ...
    keys = [key for queue in settings.SAM_QUEUES
            for key in (queue.encode(), *client.scan_iter(match=f"{queue}\x06\x16*".encode()))]
    client.delete(*keys)
    # What coalesced enqueues left waiting (subscriptions/pending.py) belongs to this run too.
    base = settings.CELERY_TASK_DEFAULT_QUEUE
    client.delete(f"{base}:pending-resolution", f"{base}:pending-resolution:armed")
    tags = _unacked(client)
    if tags:  # delivered to a worker that was killed: never acknowledged
        client.hdel("unacked", *tags)
        client.zrem("unacked_index", *tags)


def _unacked(client) -> list[bytes]:
    """Delivery tags of this run's queue in kombu's hash of delivered, unacknowledged messages
    (each value is ``[message, exchange, routing key]``)."""
    queues = set(settings.SAM_QUEUES)
    tags = []
    for tag, value in client.hscan_iter("unacked"):
        try:
            routing_key = json.loads(value)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in queues:
            tags.append(tag)
    return tags


def wait_idle(timeout: float = WAIT) -> float:
    """Wait until the broker holds no waiting and no unacknowledged task (with ``acks_late`` a
    task in progress stays unacknowledged), three checks in a row: the worker can then be
    stopped without interrupting a task (and its log stays clean)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    quiet = 0

    def idle() -> bool:
        nonlocal quiet
        # kombu's Redis transport keeps delivered, unacked messages in the "unacked" hash
        # (shared by every queue: count this run's only). Reports, resolution and the rest (P12).
        waiting = sum(client.llen(queue) for queue in settings.SAM_QUEUES)
        unacked = len(_unacked(client))
        quiet = quiet + 1 if waiting == 0 and unacked == 0 else 0
        return quiet >= 3

    return wait_until(idle, "the worker is idle", timeout)


def wait_until(condition, what: str, timeout: float = WAIT) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"not within {timeout} s: {what}")


@contextmanager
def tasks_to_broker():
    """In this process, send tasks to the broker instead of running them eagerly."""
    from sam.celery import app

    previous = app.conf.task_always_eager, settings.CELERY_TASK_ALWAYS_EAGER
    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    try:
        yield
    finally:
        app.conf.task_always_eager, settings.CELERY_TASK_ALWAYS_EAGER = previous


def assert_clean(proc: Process) -> None:
    output = proc.output()
    assert "Traceback" not in output, output[-4000:]
