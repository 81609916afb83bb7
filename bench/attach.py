#!/usr/bin/env python3
"""Benchmark: guests on VDC hosts auto-attach over the Candlepin wire, then rhsmcertd's
periodic checks (issue 11; consumer-api.md 4).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench_attach REDIS_URL=redis://127.0.0.1:6379/12 \\
    SAM_DATA_DIR=var/bench-attach python bench/attach.py [--hosts 50] [--guests-per-host 20]

Starts its own ``manage.py serve`` (TLS, sam's CA) and a Celery worker on a queue of its own,
both on ``DATABASE_URL`` (a database whose name starts with ``sambench``: it is migrated, and
each run uses a fresh org in it). In this process (Django imported from the repository): an org
with a VDC subscription of ``--hosts`` units (unlimited guests, derived RHEL-G providing 479),
and ``--hosts`` hypervisors reported with ``--guests-per-host`` guests each. Then, over HTTPS
with one new connection per request (``--clients`` concurrent clients):

1. every guest registers (Basic auth; facts ``virt.is_guest``, ``virt.uuid``; 479 installed),
   without auto-attach;
2. every guest sends ``attach --auto`` (``POST /consumers/{uuid}/entitlements``, its identity
   certificate): the first guest of a host entitles the host (host auto-attach) and the worker
   re-resolves the host's other guests. Figure: from the first request until every guest holds
   an entitlement from its host's derived pool (one SQL check every 50 ms), and the requests'
   p50/p99;
3. every guest runs rhsmcertd's periodic check, ``GET .../certificates/serials`` then
   ``GET .../compliance``: client p50/p99, and the web processes' CPU time for all of them
   (``/proc``, utime+stime of serve's process group) projected to 10,000 systems every 4 hours
   (target < 5 % of one core);
4. for ``--sample`` guests, the same two GETs in this process through Django's whole stack
   (middleware, certificate authentication, view) with the certificate in the environ as
   serve passes it: server time p50/p99 without TLS, and the statements of each (constant?).

Prints one JSON object. ``--hosts 5 --guests-per-host 4`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)

from register import Client, basic, free_port, pct  # noqa: E402

TARGETS = {"checks_cpu_percent_of_core_10k_per_4h": 5.0, "serials_server_p50_ms": 20,
           "compliance_server_p50_ms": 20}
QUEUE = "sambench-attach"
FACTS = {"cpu.cpu_socket(s)": "1", "system.certificate_version": "3.2", "virt.is_guest": "true",
         "distribution.name": "Red Hat Enterprise Linux", "uname.machine": "x86_64"}
INSTALLED = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server",
              "version": "9.4", "arch": "x86_64"}]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: list[float]) -> dict:
    return {"p50_ms": pct(values, 0.50), "p99_ms": pct(values, 0.99), "n": len(values)}


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process of a process group (serve's master and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class Process:
    def __init__(self, args: list[str], env: dict, name: str):
        self.log = tempfile.NamedTemporaryFile(prefix=f"sam-bench-{name}-", suffix=".log",
                                               delete=False)
        self.popen = subprocess.Popen(args, cwd=REPO_DIR, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        with open(self.log.name, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
    os.environ["SAM_CELERY_QUEUE"] = QUEUE
    sys.path.insert(0, REPO_DIR)
    import django

    django.setup()


def build_world(owner: str, password: str, hosts: int, per_host: int) -> list[str]:
    """The org, its admin, the VDC subscription and the reported hosts; the guest ids."""
    from hypervisors import services as mapping
    from orgs.services import OPERATOR, create_org, set_member_role
    from subscriptions import services as subs

    org = create_org(owner, f"sam bench {owner}")
    set_member_role(org, "bench-admin", "admin", password=password, actor=OPERATOR)
    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "RHEL for Virtual Datacenters (guest)", provided=["479"])
    subs.create_product(org, "VDC", "Virtual Datacenter", attributes={"virt_limit": "unlimited"},
                        derived="RHEL-G")
    subs.create_subscription(org, "VDC", hosts)
    guest_ids = []
    for h in range(hosts):
        ids = [f"{owner}-{h:04d}-{g:04d}" for g in range(per_host)]
        mapping.report_hypervisor(org, f"{owner}-esx-{h:04d}", f"{owner}-esx-{h:04d}",
                                  guests=[{"guestId": i} for i in ids])
        guest_ids += ids
    return guest_ids


def uncovered(owner: str) -> int:
    """Guests of the org without an entitlement from their current host's derived pool."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM orgs_system s JOIN orgs_organization o ON o.id = s.org_id "
            "WHERE o.key = %s AND s.is_guest AND NOT EXISTS (SELECT 1 FROM "
            "subscriptions_entitlement e JOIN subscriptions_pool p ON p.id = e.pool_id "
            "WHERE e.system_id = s.id AND p.requires_host_id = s.current_host_id)", [owner])
        return cursor.fetchone()[0]


def in_process(consumers: list[dict], paths: list[tuple[str, str]], prefix: str) -> dict:
    """The GETs through Django's stack in this process: server time and statements."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from django.db import connection
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext

    from sam import clientcert

    client = DjangoClient()
    out = {}
    for name, path in paths:
        times, statements = [], set()
        for n, body in enumerate([consumers[0], *consumers]):  # the first one warms up
            der = x509.load_pem_x509_certificate(body["idCert"]["cert"].encode()).public_bytes(
                Encoding.DER)
            extra = {clientcert.ENVIRON_KEY: der, "HTTP_HOST": "127.0.0.1", "secure": True}
            with CaptureQueriesContext(connection) as queries:
                start = time.perf_counter()
                response = client.get(prefix + path.format(body["uuid"]), **extra)
                times.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{name} in process answered {response.status_code}")
            if n == 0:
                times.pop()
                continue
            statements.add(len(queries))
        out[name] = {**summary(times), "statements": sorted(statements),
                     "statements_constant": len(statements) == 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--guests-per-host", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTPS clients")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--sample", type=int, default=200, help="guests for the in-process GETs")
    parser.add_argument("--cover-timeout", type=float, default=900)
    args = parser.parse_args()

    db = os.environ.get("DATABASE_URL", "")
    if not urlsplit(db).path.lstrip("/").startswith("sambench"):
        sys.exit("DATABASE_URL must name a database whose name starts with 'sambench' "
                 "(it is migrated and filled)")
    data_dir = os.environ.setdefault("SAM_DATA_DIR", os.path.join(REPO_DIR, "var", "bench-attach"))
    os.makedirs(data_dir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", SAM_ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
               SAM_BEAT_IN_PROCESS="0", SAM_CELERY_QUEUE=QUEUE, SAM_TASKS_EAGER="0")
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=REPO_DIR, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["SAM_ALLOWED_HOSTS"] = env["SAM_ALLOWED_HOSTS"]
    os.environ["SAM_TASKS_EAGER"] = "0"
    setup_django()

    owner = f"bench{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(16)
    total = args.hosts * args.guests_per_host
    result: dict = {"targets": TARGETS, "hosts": args.hosts, "guests": total,
                    "clients": args.clients, "web_workers": args.web_workers,
                    "worker_concurrency": args.worker_concurrency, "cpus": os.cpu_count(),
                    "loadavg_start": loadavg()}
    guest_ids = build_world(owner, password, args.hosts, args.guests_per_host)

    port = free_port()
    url = f"https://127.0.0.1:{port}/candlepin"
    worker = Process([sys.executable, "-m", "celery", "-A", "sam", "worker", "--pool=prefork",
                      f"--concurrency={args.worker_concurrency}", "-l", "INFO", "-Q",
                      f"{QUEUE},{QUEUE}.reports,{QUEUE}.resolution", "--without-gossip",
                      "--without-mingle", "--without-heartbeat"], env, "worker")
    server = Process([sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{port}",
                      "--workers", str(args.web_workers)], env, "serve")
    workdir = tempfile.mkdtemp(prefix="sam-bench-attach-")
    try:
        cacert = os.path.join(data_dir, "pki", "ca.crt")
        deadline = time.monotonic() + 60
        while True:
            try:
                client = Client(url, cacert)
                if client.request("GET", "/status")[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {server.output()[-2000:]}")
            time.sleep(0.2)
        auth = basic("bench-admin", password)
        lock = threading.Lock()

        # 1. Registration (no auto-attach).
        consumers: dict[str, dict] = {}
        reg_ms: list[float] = []

        def register(guest_id: str) -> None:
            facts = dict(FACTS, **{"virt.uuid": guest_id})
            status, body, ms = client.request("POST", f"/consumers?owner={owner}", {
                "type": "system", "name": f"vm-{guest_id}", "facts": facts,
                "installedProducts": INSTALLED}, auth)
            if status != 200:
                raise RuntimeError(f"registration answered {status}: {body}")
            cert, key = os.path.join(workdir, f"{guest_id}.pem"), os.path.join(workdir, f"{guest_id}-key.pem")
            with open(cert, "w") as handle:
                handle.write(body["idCert"]["cert"])
            with open(key, "w") as handle:
                handle.write(body["idCert"]["key"])
            with lock:
                consumers[guest_id] = {"uuid": body["uuid"], "cert": (cert, key),
                                       "idCert": body["idCert"]}
                reg_ms.append(ms)

        log(f"registering {total} guests ...")
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(register, guest_ids))
        result["register"] = {**summary(reg_ms),
                              "per_s": round(total / (time.perf_counter() - start), 1)}

        # 2. attach --auto from every guest; until every guest is covered through its host.
        attach_ms: list[float] = []

        def attach(guest_id: str) -> None:
            c = consumers[guest_id]
            status, body, ms = client.request("POST", f"/consumers/{c['uuid']}/entitlements",
                                              cert=c["cert"])
            if status != 200:
                raise RuntimeError(f"attach answered {status}: {body}")
            with lock:
                attach_ms.append(ms)

        log(f"attach --auto from {total} guests ...")
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(attach, guest_ids))
        requests_done = time.perf_counter() - start
        left = uncovered(owner)
        while left and time.perf_counter() - start < args.cover_timeout:
            time.sleep(0.05)
            left = uncovered(owner)
        result["attach"] = {**summary(attach_ms), "requests_s": round(requests_done, 1),
                            "all_covered_s": None if left else round(time.perf_counter() - start, 1),
                            "uncovered_at_end": left}
        from subscriptions.models import EntitlementEvent

        triggers: dict[str, int] = {}
        for trigger in EntitlementEvent.objects.filter(
                org__key=owner, action="attached").values_list("trigger", flat=True):
            triggers[trigger] = triggers.get(trigger, 0) + 1
        result["attach"]["attached_by_trigger"] = triggers

        # 3. rhsmcertd's periodic check from every guest, over HTTPS.
        paths = [("serials", "/consumers/{}/certificates/serials"),
                 ("compliance", "/consumers/{}/compliance")]
        check_ms: dict[str, list[float]] = {name: [] for name, _ in paths}

        def check(guest_id: str) -> None:
            c = consumers[guest_id]
            for name, path in paths:
                status, _, ms = client.request("GET", path.format(c["uuid"]), cert=c["cert"])
                if status != 200:
                    raise RuntimeError(f"{name} answered {status}")
                with lock:
                    check_ms[name].append(ms)

        log(f"periodic checks from {total} guests ...")
        cpu_before = group_cpu_seconds(server.popen.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(check, guest_ids))
        wall = time.perf_counter() - start
        cpu = group_cpu_seconds(server.popen.pid) - cpu_before
        per_check_ms = cpu * 1000 / total
        projected = per_check_ms / 1000 * 10_000 / (4 * 3600) * 100
        result["checks_over_https"] = {
            name: summary(values) for name, values in check_ms.items()}
        result["checks_over_https"].update({
            "wall_s": round(wall, 1), "web_cpu_s": round(cpu, 2),
            "web_cpu_ms_per_system_check": round(per_check_ms, 2),
            "note": "new connection per request (TLS handshake included in client time and in "
                    "the web CPU); rhsmcertd reuses one keep-alive connection per run"})
        result["checks_cpu_percent_of_core_10k_per_4h"] = round(projected, 3)

        # 4. Server time and statements in this process (no TLS).
        sample = list(consumers.values())[:args.sample]
        result["checks_in_process"] = in_process(sample, paths, "/candlepin")
        result["loadavg_end"] = loadavg()
        inproc = result["checks_in_process"]
        result["met"] = {
            "checks_cpu": projected < TARGETS["checks_cpu_percent_of_core_10k_per_4h"],
            "serials_server_p50": inproc["serials"]["p50_ms"] <= TARGETS["serials_server_p50_ms"],
            "compliance_server_p50": inproc["compliance"]["p50_ms"]
            <= TARGETS["compliance_server_p50_ms"],
            "statements_constant": all(v["statements_constant"] for v in inproc.values()),
            "all_covered": not result["attach"]["uncovered_at_end"],
        }
    finally:
        server.stop()
        worker.stop()
        if "Traceback" in worker.output():
            log(f"worker log has a traceback: {worker.log.name}")
        if "Traceback" in server.output():
            log(f"serve log has a traceback: {server.log.name}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
