"""A real ``manage.py serve`` process for tests, and the real ``rhsm==1.19.2`` client against it.

Server side: ``start_server`` runs ``python manage.py serve`` on a free port against the pytest
database (tasks eager, so a check-in is applied inside its request) and ``stop_server`` kills
its process group.

Client side: ``configure_rhsm`` writes an rhsm.conf for that server (its self-signed
certificate as the trusted CA, verification on) and loads it, and ``patch_rhsm`` repairs the
Python 3 defects of 1.19.2 described in shared/reference/rhsm-client.md -- here only, never
in the server:

1. ``_encode_auth`` formats bytes, sending ``Authorization: Basic b'...'``;
2. ``Retry-After`` is read only when spelled ``retry-after``;
3. there is no heartbeat call (``hypervisor_heartbeat`` below sends it as modern rhsm does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/candlepin"
START_TIMEOUT = 60  # seconds; a loaded CI machine, typical start is about 1-2 s


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_database_url() -> str:
    """``DATABASE_URL`` of the pytest (test_...) database, as tests/test_worker.py builds it."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("the server process needs the PostgreSQL test database (DATABASE_URL)")
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    tls: bool = True
    cert_path: Path = field(init=False)

    def __post_init__(self):
        self.cert_path = self.data_dir / "tls" / "sam.crt"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_path))

    def get_json(self, path: str, timeout: float = 10) -> tuple[int, dict]:
        context = self.ssl_context() if self.tls else None
        with urllib.request.urlopen(self.url + path, context=context, timeout=timeout) as response:
            return response.status, json.loads(response.read())


def start_server(data_dir: Path, *, env: dict | None = None, args: tuple[str, ...] = ()) -> Server:
    """``manage.py serve --bind 127.0.0.1:<free port> --workers 1`` on the test database; returns
    when ``GET /candlepin/status/`` answers over TLS (the self-signed certificate as the CA), or
    over plain HTTP with ``--no-tls`` in ``args``."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environ = dict(os.environ)
    for name in ("SAM_TLS_CERT", "SAM_TLS_KEY", "SAM_BIND", "SAM_FORWARDED_ALLOW_IPS", "SAM_CA_CERT",
                 "SAM_CA_KEY"):
        environ.pop(name, None)
    environ.update({
        "DATABASE_URL": server_database_url(),
        "SAM_DATA_DIR": str(data_dir),
        "SAM_TASKS_EAGER": "1",  # REDIS_URL may stay: check-ins are applied in the request
        "SAM_DB_CONN_MAX_AGE": "0",  # no idle connection outlives a request (flush, DROP DATABASE)
        "SAM_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SAM_BEAT_IN_PROCESS": "0",  # no periodic task runs into a test's data
        "PYTHONUNBUFFERED": "1",
    })
    environ.update(env or {})
    log_path = data_dir / f"serve-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             *args],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(process=process, port=port, data_dir=data_dir, log_path=log_path,
                    tls="--no-tls" not in args)
    try:
        _wait_until_serving(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        if server.cert_path.exists() or not server.tls:
            try:
                status, _ = server.get_json(f"{PREFIX}/status/", timeout=2)
                if status == 200:
                    return
            except (OSError, ssl.SSLError) as exc:  # not listening yet
                last_error = exc
        time.sleep(0.1)
    raise RuntimeError(f"serve did not answer within {START_TIMEOUT} s ({last_error}):\n"
                       f"{server.log()[-4000:]}")


def stop_server(server: Server) -> int | None:
    """SIGTERM the server's process group (SIGKILL after 20 s); its exit code."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        return None


# The marks of every module that runs rhsm against ``serve`` with a worker (the ``server``
# fixture of tests/conftest.py).
WIRE_MARKS = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:rhsm.connection"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:rhsm.certificate2"),
]


def serve_with_worker(tmp_path_factory):
    """A module fixture's body: serve over TLS and a real Celery worker that shares its data
    directory -- a worker issues entitlement certificates, which takes the server's CA and the
    secret key that seals the consumers' keys -- with rhsm configured for it."""
    from tests import workers

    workers.require_services()
    workers.flush_broker()
    server = start_server(tmp_path_factory.mktemp("sam-serve"), env={"SAM_TASKS_EAGER": "0"})
    worker = None
    try:
        worker = workers.start_worker(concurrency=1, SAM_DATA_DIR=server.data_dir)
        configure_rhsm(server, tmp_path_factory.mktemp("rhsm"))
        yield server
    finally:
        stop_server(server)
        if worker is not None:
            worker.kill()
    assert "Traceback" not in server.log(), server.log()[-6000:]
    workers.assert_clean(worker)


# --- the rhsm client -------------------------------------------------------------------------


def configure_rhsm(server: Server, directory: Path) -> Path:
    """Write an rhsm.conf for ``server`` (verification on, its certificate as ``*.pem`` in
    ``ca_cert_dir``) and make rhsm use it.

    1.19.2 reads its configuration once, when ``rhsm.connection`` is imported, and only from
    ``/etc/rhsm/rhsm.conf`` (it defines ``RHSM_CONFIG`` but never reads it; modern rhsm does).
    So the variable is set for modern clients, and the parsed file is installed explicitly:
    ``initConfig(path)`` replaces the global before the import, and ``rhsm.connection.config``
    is replaced when it was imported already.
    """
    directory = Path(directory)
    ca_dir = directory / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server.cert_path, ca_dir / "sam.pem")
    path = directory / "rhsm.conf"
    path.write_text(
        "[server]\n"
        "hostname = 127.0.0.1\n"
        f"port = {server.port}\n"
        f"prefix = {PREFIX}\n"
        "insecure = 0\n"
        "ssl_verify_depth = 3\n"
        "server_timeout = 30\n"
        "proxy_hostname =\n"
        "\n"
        "[rhsm]\n"
        f"ca_cert_dir = {ca_dir}/\n"
    )
    os.environ["RHSM_CONFIG"] = str(path)
    # The server is local: never through a proxy from the environment.
    for name in ("no_proxy", "NO_PROXY"):
        hosts = [h for h in os.environ.get(name, "").split(",") if h]
        os.environ[name] = ",".join(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))

    import rhsm.config

    config = rhsm.config.initConfig(str(path))
    import rhsm.connection

    rhsm.connection.config = config
    patch_rhsm()
    return path


def _encode_auth(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _rate_limit_init(self, code, msg=None, headers=None):
    from rhsm.connection import RestlibException, safe_int

    RestlibException.__init__(self, code, msg)
    self.headers = headers or {}
    self.msg = msg or ""
    retry_after = next((v for k, v in self.headers.items() if k.lower() == "retry-after"), None)
    self.retry_after = safe_int(retry_after)


ORIGINAL: dict = {}


def patch_rhsm() -> None:
    """Repair 1.19.2's Basic header and Retry-After lookup (idempotent)."""
    import rhsm.connection as connection

    if not ORIGINAL:
        ORIGINAL["_encode_auth"] = connection._encode_auth
        ORIGINAL["rate_limit_init"] = connection.RateLimitExceededException.__init__
    connection._encode_auth = _encode_auth
    connection.RateLimitExceededException.__init__ = _rate_limit_init


@contextlib.contextmanager
def unpatched_rhsm(*, auth: bool = True, retry_after: bool = True):
    """1.19.2 as released (its Basic header, its Retry-After lookup, or both), for showing
    what the server does with what it sends."""
    import rhsm.connection as connection

    patch_rhsm()
    if auth:
        connection._encode_auth = ORIGINAL["_encode_auth"]
    if retry_after:
        connection.RateLimitExceededException.__init__ = ORIGINAL["rate_limit_init"]
    try:
        yield
    finally:
        patch_rhsm()


def connect(username: str | None = None, password: str | None = None):
    """A ``UEPConnection`` as virt-who builds it: everything from the rhsm config, Basic auth."""
    from rhsm.connection import UEPConnection

    return UEPConnection(username=username, password=password)


def hypervisor_heartbeat(conn, owner: str, reporter_id: str):
    """``PUT {prefix}/hypervisors/{owner}/heartbeat?reporter_id=`` with no body, as modern rhsm's
    ``UEPConnection.hypervisorHeartbeat`` sends it (only when the server lists the capability)."""
    if not conn.has_capability("hypervisors_heartbeat"):
        raise AssertionError("the server does not list hypervisors_heartbeat")
    query = urlencode({"reporter_id": reporter_id})
    return conn.conn.request_put(f"/hypervisors/{conn.sanitize(owner)}/heartbeat?{query}")


def wait_for_job(conn, job_id: str, timeout: float = 30) -> dict:
    """Poll ``GET /jobs/{id}?result_data=True`` as virt-who does until the job is done."""
    deadline = time.monotonic() + timeout
    while True:
        job = conn.getJob(job_id)
        if job["state"] in ("FINISHED", "FAILED", "CANCELED"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.1)
