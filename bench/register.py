#!/usr/bin/env python3
"""Benchmark of subscription-manager registration (performance.md P9, consumer-api.md 4).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench SAM_DATA_DIR=var/bench \\
    python bench/register.py --serve [--count 200] [--clients 8]

``--serve`` starts ``manage.py serve`` (2 workers x 4 threads, TLS, the CA from
``$SAM_DATA_DIR/pki``) on a free port, creates the org and its admin with ``manage.py
createorg``/``addmember``, and measures:

- cold: the first registration of a fresh server process (new connection, TLS handshake, the
  PBKDF2 password hash, first use of the CA and key stock), over ``--cold-runs`` restarts;
- warm: ``--count`` registrations from ``--clients`` concurrent clients, one new HTTPS
  connection per request (as subscription-manager opens one per command): p50, p99 and
  registrations per second;
- ``GET /consumers/{uuid}/compliance`` and ``/certificates/serials`` with the identity
  certificate (mutual TLS), new connection each: p50 client time and the server time
  (``X-Sam-Elapsed`` is not sent, so server time = p50 minus the connect+handshake p50 of
  ``GET /status`` over a new connection).

Without ``--serve``, ``--url`` names a running server (``--cacert`` its CA), ``--owner``,
``--user`` and ``--password`` an existing org admin. HTTP goes through the stdlib only.
Prints one JSON object with every figure next to its target.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
TARGETS = {"register_p50_ms": 150, "registrations_per_s": 15, "compliance_server_p50_ms": 20,
           "serials_server_p50_ms": 20}
FACTS = {"cpu.cpu_socket(s)": "1", "cpu.core(s)_per_socket": "2", "virt.is_guest": "false",
         "system.certificate_version": "3.2", "distribution.name": "Red Hat Enterprise Linux",
         "distribution.version": "9.4", "uname.machine": "x86_64", "memory.memtotal": "8000000"}
INSTALLED = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server",
              "version": "9.4", "arch": "x86_64"}]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class Client:
    def __init__(self, url: str, cacert: str):
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 443, parts.path.rstrip("/")
        self.cacert = cacert

    def context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cacert)
        if cert:
            context.load_cert_chain(*cert)
        return context

    def request(self, method: str, path: str, body=None, headers=None, cert=None):
        """One request on a new connection; (status, parsed body, milliseconds)."""
        start = time.perf_counter()
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context(cert),
                                           timeout=60)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, self.prefix + path, body=data, headers={
                "Accept": "application/json", "Content-Type": "application/json",
                "User-Agent": "RHSM/1.0 (cmd=subscription-manager) sam-bench", **(headers or {})})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        elapsed = (time.perf_counter() - start) * 1000
        return response.status, (json.loads(raw) if raw else None), elapsed


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def register(client: Client, owner: str, auth: dict, name: str) -> tuple[dict, float]:
    facts = dict(FACTS, **{"dmi.system.uuid": str(uuidlib.uuid4()), "network.fqdn": name})
    status, body, ms = client.request("POST", f"/consumers?owner={owner}", {
        "type": "system", "name": name, "facts": facts, "installedProducts": INSTALLED,
        "contentTags": ["rhel-9"], "role": "", "addOns": [], "usage": "", "serviceLevel": ""},
        auth)
    if status != 200:
        raise RuntimeError(f"registration answered {status}: {body}")
    return body, ms


# --- a server of our own ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(*args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_DIR, input=stdin, text=True,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Server:
    def __init__(self, port: int):
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="sam-bench-serve-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1", SAM_ALLOWED_HOSTS="127.0.0.1,localhost",
                   SAM_BEAT_IN_PROCESS="0")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}"], cwd=REPO_DIR,
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, client: Client) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.request("GET", "/status")[0] == 200:
                    return
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve did not start; see {self.log.name}")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="start manage.py serve itself")
    parser.add_argument("--url", help="https://host:port/candlepin of a running server")
    parser.add_argument("--cacert", help="the server's CA (default $SAM_DATA_DIR/pki/ca.crt)")
    parser.add_argument("--owner", default=None)
    parser.add_argument("--user", default="bench-admin")
    parser.add_argument("--password", default=None)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--gets", type=int, default=100)
    args = parser.parse_args()

    data_dir = os.environ.get("SAM_DATA_DIR", os.path.join(REPO_DIR, "var"))
    cacert = args.cacert or os.path.join(data_dir, "pki", "ca.crt")
    owner = args.owner or f"bench{secrets.token_hex(3)}"
    password = args.password or secrets.token_urlsafe(16)
    servers: list[Server] = []
    result: dict = {"targets": TARGETS, "clients": args.clients, "count": args.count,
                    "cpus": os.cpu_count()}
    try:
        if args.serve:
            manage("migrate", "--no-input")
            manage("createorg", owner, "--name", f"sam bench {owner}")
            manage("addmember", owner, args.user, "--role", "admin", "--password-stdin",
                   stdin=password + "\n")
            port = free_port()
            url = f"https://127.0.0.1:{port}/candlepin"
        else:
            url = args.url
        auth = basic(args.user, password)

        cold = []
        for run in range(args.cold_runs if args.serve else 0):
            server = Server(port)
            servers.append(server)
            client = Client(url, cacert) if os.path.exists(cacert) else None
            while client is None:  # the first start creates the CA
                time.sleep(0.2)
                client = Client(url, cacert) if os.path.exists(cacert) else None
            server.wait(client)
            _, ms = register(client, owner, auth, f"cold-{run}-{secrets.token_hex(3)}")
            cold.append(ms)
            if run < args.cold_runs - 1:
                server.stop()
                servers.pop()
        if args.serve and not servers:
            server = Server(port)
            servers.append(server)
            server.wait(Client(url, cacert))
        client = Client(url, cacert)
        result["cold_ms"] = [round(c, 1) for c in cold]

        # Warm-up (not measured): a few registrations so every worker process has the CA loaded.
        for i in range(4):
            register(client, owner, auth, f"warmup-{i}-{secrets.token_hex(3)}")

        times: list[float] = []
        consumers: list[dict] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            body, ms = register(client, owner, auth, f"bench-{i}-{secrets.token_hex(3)}")
            with lock:
                times.append(ms)
                if len(consumers) < 20:
                    consumers.append(body)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.count)))
        wall = time.perf_counter() - start
        result["register_p50_ms"] = pct(times, 0.50)
        result["register_p99_ms"] = pct(times, 0.99)
        result["registrations_per_s"] = round(args.count / wall, 1)

        # Consumer GETs with the identity certificate.
        workdir = tempfile.mkdtemp(prefix="sam-bench-certs-")
        certs = []
        for n, body in enumerate(consumers):
            cert, key = os.path.join(workdir, f"{n}.pem"), os.path.join(workdir, f"{n}-key.pem")
            with open(cert, "w") as handle:
                handle.write(body["idCert"]["cert"])
            with open(key, "w") as handle:
                handle.write(body["idCert"]["key"])
            certs.append((body["uuid"], (cert, key)))
        status_ms = [client.request("GET", "/status")[2] for _ in range(args.gets)]
        result["status_new_connection_p50_ms"] = pct(status_ms, 0.5)
        for name, path in (("compliance", "/consumers/{}/compliance"),
                           ("serials", "/consumers/{}/certificates/serials")):
            samples = []
            for i in range(args.gets):
                uuid, cert = certs[i % len(certs)]
                status, _, ms = client.request("GET", path.format(uuid), cert=cert)
                if status != 200:
                    raise RuntimeError(f"{name} answered {status}")
                samples.append(ms)
            result[f"{name}_p50_ms"] = pct(samples, 0.5)
            result[f"{name}_server_p50_ms"] = round(max(0.0, pct(samples, 0.5)
                                                       - result["status_new_connection_p50_ms"]), 1)
        result["met"] = {
            "register_p50": result["register_p50_ms"] <= TARGETS["register_p50_ms"],
            "throughput": result["registrations_per_s"] >= TARGETS["registrations_per_s"],
            "compliance": result["compliance_server_p50_ms"] <= TARGETS["compliance_server_p50_ms"],
            "serials": result["serials_server_p50_ms"] <= TARGETS["serials_server_p50_ms"],
        }
    finally:
        for server in servers:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
