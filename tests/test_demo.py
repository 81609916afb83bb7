"""The README's first command: ``./scripts/demo`` sets up, seeds and serves over HTTPS, and real
clients can use it.

Runs the real script in its own process group (embedded default: SQLite in a fresh data dir,
tasks and periodic tasks in-process, ``manage.py serve`` with its self-signed certificate) on a
free port, reads what it prints (password, URL, certificate path and fingerprint), then, as a
person and virt-who would: signs in to the admin and the web UI over verified HTTPS (the printed
certificate as the only CA), sees the coverage chart, makes a virt-who configuration on the setup
page (which names the address the server was really reached at) and checks a hypervisor in with
the PyPI ``rhsm`` client using it. No test database is used.
"""

from __future__ import annotations

import configparser
import gzip
import html
import http.cookiejar
import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from sam import tls
from tests import rhsm_helper

ROOT = Path(__file__).resolve().parent.parent
PASSWORD_TIMEOUT = 300  # first run may (re)install sam into .venv
SERVER_TIMEOUT = 60

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:rhsm.connection")


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _wait_for(pattern: str, proc, lines: queue.Queue, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + PASSWORD_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"scripts/demo ended ({proc.poll()}) before printing "
                                 f"{pattern!r}:\n" + "".join(seen))
        seen.append(line)
        match = re.search(pattern, line.rstrip("\n"))
        if match:
            return match
    raise AssertionError(f"no {pattern!r} line within the time limit:\n" + "".join(seen))


class Browser:
    """urllib with cookies, verifying the demo's certificate as the only trusted CA."""

    def __init__(self, base: str, context: ssl.SSLContext):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  urllib.request.HTTPSHandler(context=context))

    def get(self, path: str, **headers) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.base + path, headers=headers)
        with self.opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()

    def text(self, path: str) -> str:
        status, _, body = self.get(path)
        assert status == 200, path
        return body.decode()

    def post_form(self, path: str, fields: dict) -> tuple[str, str]:
        """Fill the form at ``path`` (its CSRF token) and submit it; (final URL, page)."""
        page = self.text(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, f"no CSRF token in {path}"
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1), **fields}).encode()
        request = urllib.request.Request(self.base + path, data=data,
                                         headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=30) as response:
            return response.geturl(), response.read().decode()


def _wait_for_health(browser: Browser, proc) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            status, _, body = browser.get("/healthz")
            if status == 200 and b"ok" in body:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{browser.base}/healthz did not answer within {SERVER_TIMEOUT} s")


@pytest.fixture
def demo(tmp_path):
    """``./scripts/demo`` on a free port with its own data directory; what it printed."""
    port = rhsm_helper.free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "SAM_TASKS_EAGER", "DJANGO_SETTINGS_MODULE")}
    env.update(SAM_DATA_DIR=str(data), SAM_DEMO_ADDR=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1")
    stderr = open(tmp_path / "demo.stderr", "w")  # closed in finally
    proc = subprocess.Popen([str(ROOT / "scripts" / "demo")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        password = _wait_for(r"^Admin password: (\S+)$", proc, lines, seen).group(1)
        url = _wait_for(r"^sam demo: (https://\S+)/ ", proc, lines, seen).group(1)
        cert = _wait_for(r"^  certificate +(\S+)$", proc, lines, seen).group(1)
        fingerprint = _wait_for(r"^  SHA-256 fingerprint +(\S+)$", proc, lines, seen).group(1)
        _wait_for(r"Open the virt-who setup page", proc, lines, seen)
        yield SimpleNamespace(proc=proc, port=port, data=data, password=password, url=url,
                              cert=Path(cert), fingerprint=fingerprint, seen=seen, lines=lines)
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
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        stderr.close()


def test_scripts_demo_serves_https_that_real_clients_use(demo, tmp_path):
    output = "".join(demo.seen)
    assert "Username: admin" in output
    assert "Demo data loaded into organization ACME." in output
    assert demo.url == f"https://127.0.0.1:{demo.port}"
    assert demo.cert == demo.data / "tls" / "sam.crt"
    assert demo.fingerprint == tls.fingerprint(tls.load_certificate(demo.cert))
    assert "/etc/rhsm/ca/sam.pem" in output and f"{demo.url}/o/ACME/setup/" in output

    # Verified HTTPS with the printed certificate as the only CA; a client without it refuses.
    context = ssl.create_default_context(cafile=str(demo.cert))
    browser = Browser(demo.url, context)
    _wait_for_health(browser, demo.proc)
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{demo.url}/healthz", timeout=10,
                               context=ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)

    # The operators' admin.
    final, _ = browser.post_form("/admin/login/?next=/admin/", {
        "username": "admin", "password": demo.password, "next": "/admin/"})
    assert urllib.parse.urlsplit(final).path == "/admin/"
    assert {c.name: c.secure for c in browser.jar}["sessionid"] is True  # Secure over HTTPS
    systems = browser.text("/admin/orgs/system/")
    for name in ("esx01.acme.example", "esx02.acme.example", "kvm01.acme.example",
                 "dev05.acme.example"):
        assert name in systems
    assert "ACME" in browser.text("/admin/orgs/organization/")

    # The web UI: the dashboard draws the 90-day coverage chart on the first sign-in.
    dashboard = browser.text("/o/ACME/")
    assert 'id="coverage-chart"' in dashboard and dashboard.count("<polyline") == 3
    points = re.findall(r'<polyline[^>]*points="([^"]+)"', dashboard)
    assert all(len(series.split()) == 90 for series in points), points

    # Static files collected by the script: hashed names, long cache lifetime, gzip.
    stylesheet = re.search(r'href="(/static/sam/sam\.[0-9a-f]{12}\.css)"', dashboard).group(1)
    _, headers, body = browser.get(stylesheet, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and b".field" in gzip.decompress(body)
    assert "immutable" in headers["Cache-Control"]
    assert int(re.search(r"max-age=(\d+)", headers["Cache-Control"]).group(1)) >= 30 * 86400

    # virt-who setup: the form proposes this server as the browser reached it, and the
    # configuration it makes is what virt-who needs.
    setup = browser.text("/o/ACME/setup/")
    assert 'name="rhsm_hostname" value="127.0.0.1"' in setup
    assert f'name="rhsm_port" value="{demo.port}"' in setup
    assert 'id="needs-https"' not in setup
    _, page = browser.post_form("/o/ACME/setup/", {
        "hypervisor_type": "esx", "section": "esx-lab", "server": "vcenter.lab.example",
        "username": "virtwho@vsphere.local", "password": "", "kubeconfig": "",
        "hypervisor_id": "hostname", "interval": "3600", "reporter_id": "virt-who-lab",
        "rhsm_hostname": "127.0.0.1", "rhsm_port": str(demo.port)})
    text = re.search(r'<textarea id="config-text"[^>]*>(.*?)</textarea>', page, re.S)
    assert text, page[:3000]
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(html.unescape(text.group(1)))
    section = config["esx-lab"]
    assert (section["rhsm_hostname"], section["rhsm_port"], section["rhsm_prefix"]) == (
        "127.0.0.1", str(demo.port), "/candlepin")

    # virt-who's client library, configured from that section, checks a hypervisor in.
    server = SimpleNamespace(cert_path=demo.cert, port=int(section["rhsm_port"]))
    rhsm_helper.configure_rhsm(server, tmp_path / "rhsm")
    conn = rhsm_helper.connect(section["rhsm_username"], section["rhsm_password"])
    assert conn.getStatus()["result"] is True
    report = {"hypervisors": [{
        "hypervisorId": {"hypervisorId": "esx-lab-1"}, "name": "esx-lab-1.lab.example",
        "guestIds": [{"guestId": "lab-vm-1", "state": 1, "attributes": {"active": 1}}],
        "facts": {"hypervisor.type": "VMware ESXi", "cpu.cpu_socket(s)": "2"}}]}
    job = conn.hypervisorCheckIn(section["owner"], "", report,
                                 options=SimpleNamespace(reporter_id=config["global"]["reporter_id"]))
    done = rhsm_helper.wait_for_job(conn, job["id"])
    assert done["state"] == "FINISHED", done
    assert [h["name"] for h in done["resultData"]["created"]] == ["esx-lab-1.lab.example"]
    assert "esx-lab-1.lab.example" in browser.text("/o/ACME/hypervisors/")

    # The periodic tasks run inside the server: in exactly one of its two worker processes.
    time.sleep(0.5)
    while True:
        try:
            line = demo.lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            demo.seen.append(line)
    stderr_log = (tmp_path / "demo.stderr").read_text()
    served = "".join(demo.seen) + stderr_log
    assert served.count("Booting worker") == 2
    assert served.count("In-process beat: process") == 1, served[-4000:]
    assert "Traceback" not in served, served[-4000:]
