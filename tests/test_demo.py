"""The README's first command: ``./scripts/demo`` sets up, seeds, serves; the admin can log in.

Runs the real script in its own process group (embedded mode: SQLite in a fresh data dir,
tasks in-process), reads the printed password, logs in to the admin with the standard library
and looks at the demo data. No test database is used.
"""

from __future__ import annotations

import http.cookiejar
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD_TIMEOUT = 300  # first run may (re)install sam into .venv
SERVER_TIMEOUT = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _wait_for_password(proc, lines: queue.Queue, seen: list[str]) -> str:
    deadline = time.monotonic() + PASSWORD_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"scripts/demo ended ({proc.poll()}) before printing the password:\n"
                                 + "".join(seen))
        seen.append(line)
        match = re.match(r"^Admin password: (\S+)$", line.rstrip("\n"))
        if match:
            return match.group(1)
    raise AssertionError("no 'Admin password:' line within the time limit:\n" + "".join(seen))


def _wait_for_health(base: str, proc) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200 and b"ok" in response.read():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{base}/healthz did not answer within {SERVER_TIMEOUT} s")


def _login(base: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/admin/login/?next=/admin/", timeout=10) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, "no CSRF token in the login form"
    data = urllib.parse.urlencode({
        "csrfmiddlewaretoken": token.group(1), "username": "admin", "password": password,
        "next": "/admin/",
    }).encode()
    request = urllib.request.Request(f"{base}/admin/login/?next=/admin/", data=data,
                                     headers={"Referer": f"{base}/admin/login/"})
    with opener.open(request, timeout=10) as response:
        page = response.read().decode()
        assert urllib.parse.urlsplit(response.geturl()).path == "/admin/", page[:2000]
    assert "sessionid" in {cookie.name for cookie in jar}
    return opener


def _get(opener, url: str) -> str:
    with opener.open(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def test_scripts_demo_serves_the_seeded_admin(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "SAM_TASKS_EAGER", "DJANGO_SETTINGS_MODULE")}
    env.update(SAM_DATA_DIR=str(tmp_path / "data"), SAM_DEMO_ADDR=f"127.0.0.1:{port}",
               PYTHONUNBUFFERED="1")
    stderr = open(tmp_path / "demo.stderr", "w")  # closed in finally
    proc = subprocess.Popen([str(ROOT / "scripts" / "demo")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        password = _wait_for_password(proc, lines, seen)
        output = "".join(seen)
        assert "Username: admin" in output
        assert "Demo data loaded into organization ACME." in output
        _wait_for_health(base, proc)

        opener = _login(base, password)
        systems = _get(opener, f"{base}/admin/orgs/system/")
        for name in ("esx01.acme.example", "esx02.acme.example", "kvm01.acme.example",
                     "dev05.acme.example"):
            assert name in systems
        orgs = _get(opener, f"{base}/admin/orgs/organization/")
        assert "ACME" in orgs
    except BaseException:
        stderr.flush()
        print("scripts/demo stdout:\n" + "".join(seen))
        print("scripts/demo stderr:\n" + (tmp_path / "demo.stderr").read_text()[-5000:])
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        stderr.close()
