"""Bulk re-resolution benchmark (performance.md P5, P10, P12; issue 12 item 6).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench_res REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/python bench/resolution.py [--quick] \\
        [--cases p5,p10_vdc,p10_import,p10_burst,p10_quantity,p12]

Migrates the database (its name must start with ``sambench``), starts its own Celery workers
on a queue of their own (``SAM_CELERY_QUEUE``, default ``sambench-res``): one on the report
queue and one on the resolution queue, as docker-compose.yml runs them. Each case builds a
fresh org in-process (bulk rows where the setup is not what is measured), makes the change
and polls the database every 50 ms until every affected system holds what it should. Prints
JSON. ``p5``: the migration of 1,000 registered guests with certificates (``checkin.py``
measures it over HTTPS too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
os.environ.setdefault("SAM_CELERY_QUEUE", "sambench-res")
os.environ["SAM_TASKS_EAGER"] = "0"
os.environ.setdefault("SAM_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import report_gen as gen  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from hypervisors import ingest, reports  # noqa: E402
from hypervisors import services as mapping  # noqa: E402
from hypervisors.models import Report  # noqa: E402
from orgs.models import ConsumerIdentity, System  # noqa: E402
from orgs.services import create_org  # noqa: E402
from sam import pki  # noqa: E402
from subscriptions import importer  # noqa: E402
from subscriptions import services as subs  # noqa: E402
from subscriptions.models import Entitlement, EntitlementCertificate, Pool  # noqa: E402

GUEST_PRODUCT = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server"}]
TARGET_S = 5.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def new_org(label: str):
    org = create_org(f"res-{label}-{uuid.uuid4().hex[:6]}", f"resolution bench {label}")
    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "RHEL guest", provided=["479"])
    subs.create_product(org, "VDC", "Virtual Datacenter", attributes={"virt_limit": "unlimited"},
                        derived="RHEL-G")
    subs.create_product(org, "RHEL", "RHEL physical", provided=["479"])
    return org


def hosts_with_guests(org, hosts: int, per_host: int) -> list[list[str]]:
    """Report ``hosts`` hypervisors with ``per_host`` guest UUIDs each (one transaction)."""
    names = [[f"{org.key}-h{h:04d}-g{g:03d}" for g in range(per_host)] for h in range(hosts)]
    entries = ingest.parse_entries({"hypervisors": [
        {"hypervisorId": {"hypervisorId": f"{org.key}-h{h:04d}"}, "name": f"h{h:04d}",
         "guestIds": [{"guestId": g} for g in guests]} for h, guests in enumerate(names)]})
    ingest.apply_entries(org, entries)
    return names


def bulk_systems(org, names: list[str], guest: bool) -> list[int]:
    """Registered systems written in bulk (their own registration is P9, not measured here)."""
    now = timezone.now()
    rows = []
    for name in names:
        facts = {"virt.is_guest": "true", "virt.uuid": name} if guest else {"cpu.cpu_socket(s)": "1"}
        rows.append(System(org=org, name=name, facts=facts, installed_products=GUEST_PRODUCT,
                           registered_at=now, last_checkin=now, **ingest.identity(facts)))
    System.objects.bulk_create(rows, batch_size=2000)
    systems = list(System.objects.filter(org=org, name__in=names).order_by("id"))
    ids = [s.id for s in systems]
    if guest:
        ingest.refresh_current_hosts_of(org, ids, now)
    with_identities(org, systems)  # as subscription-manager registers: certificates follow
    analyze()
    return ids


def analyze() -> None:
    """Planner statistics as autovacuum keeps them on a running server (the setup just wrote
    thousands of rows at once)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE orgs_system, subscriptions_entitlement, subscriptions_pool, "
                       "hypervisors_guestid, subscriptions_entitlementcertificate")


def covered(ids: list[int]) -> int:
    return Entitlement.objects.filter(system_id__in=ids).values("system_id").distinct().count()


def wait_covered(ids: list[int], since: float, timeout: float) -> dict:
    progress = []
    while True:
        done = covered(ids)
        elapsed = time.perf_counter() - since
        if not progress or progress[-1][1] != done:
            progress.append((round(elapsed, 2), done))
        if done == len(ids):
            return {"seconds": round(elapsed, 3), "systems": len(ids), "met": elapsed <= TARGET_S,
                    "progress_s_done": progress[:: max(1, len(progress) // 10)] + progress[-1:]}
        if elapsed > timeout:
            return {"seconds": None, "systems": len(ids), "covered_at_timeout": done,
                    "timeout_s": timeout, "met": False, "progress_s_done": progress[-10:]}
        time.sleep(0.05)


def wait_idle(timeout: float = 600) -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    quiet, start = 0, time.monotonic()
    while quiet < 3 and time.monotonic() - start < timeout:
        waiting = sum(client.llen(q) for q in settings.SAM_QUEUES) + client.hlen("unacked")
        quiet = quiet + 1 if waiting == 0 else 0
        time.sleep(0.2)


def p10_vdc(n: int, timeout: float) -> dict:
    """A VDC attached to a host with ``n`` registered guests: all of them entitled."""
    org = new_org("vdc")
    sub = subs.create_subscription(org, "VDC", 1)
    (names,) = hosts_with_guests(org, 1, n)
    ids = bulk_systems(org, names, guest=True)
    host = System.objects.get(org=org, hypervisor_id=f"{org.key}-h0000".lower())
    pool = Pool.objects.get(subscription=sub, type=Pool.Type.NORMAL)
    subs.attach(org, host.uuid, pool.uuid)  # commits; the host's guests are enqueued
    return wait_covered(ids, time.perf_counter(), timeout)


def p10_import(n: int, subscriptions: int, timeout: float) -> dict:
    """An import of ``subscriptions`` VDC subscriptions into an org with ``n`` guests on
    ``subscriptions`` hosts (none entitled): every guest entitled, each resolved once."""
    org = new_org("import")
    names = [g for host in hosts_with_guests(org, subscriptions, n // subscriptions) for g in host]
    ids = bulk_systems(org, names, guest=True)
    rows = importer.parse_json({"subscriptions": [
        {"product": "VDC", "quantity": 1, "start": "2025-01-01", "end": "2099-01-01",
         "contract_number": f"C-{i}"} for i in range(subscriptions)]})
    since = time.perf_counter()
    importer.run(org, rows)
    result = wait_covered(ids, since, timeout)
    result["subscriptions"] = subscriptions
    return result


def p10_burst(n: int, hosts: int, timeout: float) -> dict:
    """``n`` guests registered one after the other (as the consumer API does, each enqueuing
    its own resolution) on ``hosts`` hosts of a VDC org: seconds from the last registration."""
    org = new_org("burst")
    subs.create_subscription(org, "VDC", hosts)
    names = [g for host in hosts_with_guests(org, hosts, n // hosts) for g in host]
    start = time.perf_counter()
    for name in names:
        mapping.register_system(org, name, facts={"virt.is_guest": "true", "virt.uuid": name},
                                installed_products=GUEST_PRODUCT)
    registered = time.perf_counter() - start
    ids = list(System.objects.filter(org=org, is_guest=True).values_list("id", flat=True))
    result = wait_covered(ids, time.perf_counter(), timeout)
    result["registration_s"] = round(registered, 2)
    return result


def p10_quantity(n: int, timeout: float) -> dict:
    """A subscription's quantity raised from 1 to ``n`` with ``n`` physical systems waiting."""
    org = new_org("quantity")
    sub = subs.create_subscription(org, "RHEL", 1)
    ids = bulk_systems(org, [f"{org.key}-box{i:04d}" for i in range(n)], guest=False)
    subs.update_subscription(org, sub.uuid, quantity=n + 1)
    return wait_covered(ids, time.perf_counter(), timeout)


def with_identities(org, systems: list[System]) -> None:
    """A subscription-manager identity for each system, so that its entitlements carry
    certificates (consumer-api.md "eager + certificates"). A few key pairs are shared: key
    generation is registration's cost (P9), not resolution's."""
    now = timezone.now()
    keys = [pki.new_key() for _ in range(4)]
    sealed = [pki.seal_key(k) for k in keys]
    ConsumerIdentity.objects.bulk_create([ConsumerIdentity(
        system=s, sealed_key=sealed[n % 4], serial=pki.new_serial(),
        cert_pem=pki.pem(pki.issue_identity(org.key, str(s.uuid), s.name,
                                            keys[n % 4].public_key(), 1)),
        not_after=now.replace(year=now.year + 1)) for n, s in enumerate(systems)], batch_size=2000)


def p5_world(n: int, hosts: int, per_host: int, seed: int = 42):
    """P5 as bench/checkin.py builds it, in-process: a VDC subscription for every host, the
    standard report applied, ``n`` registered guests (the first two guests of the first hosts)
    with consumer identities, not yet resolved. Returns (org, report, registered slots, ids)."""
    org = new_org("p5")
    subs.create_subscription(org, "VDC", hosts)
    report = gen.make_report(hosts, per_host, f"sam-bench:standard:p5:{seed}")
    ingest.apply_entries(org, ingest.parse_entries(report), reporter_id="p5")
    registered = [(h, g) for h in range(hosts) for g in range(2)][:n]
    uuids = [report["hypervisors"][h]["guestIds"][g]["guestId"] for h, g in registered]
    names = [f"vm{i:05d}.{org.key}.example.com" for i in range(len(uuids))]
    now = timezone.now()
    rows = []
    for name, guest_uuid in zip(names, uuids, strict=True):
        facts = {"virt.is_guest": "true", "virt.uuid": guest_uuid, "cpu.cpu_socket(s)": "1"}
        rows.append(System(org=org, name=name, facts=facts, installed_products=GUEST_PRODUCT,
                           registered_at=now, last_checkin=now, **ingest.identity(facts)))
    System.objects.bulk_create(rows, batch_size=2000)
    systems = list(System.objects.filter(org=org, name__in=names).order_by("id"))
    ingest.refresh_current_hosts_of(org, [s.id for s in systems], now)
    with_identities(org, systems)
    analyze()
    return org, report, registered, [s.id for s in systems]


def p5_moves(report: dict, registered: list, seed: int = 42) -> list[tuple[int, int, int]]:
    """5 % of the guests move, every registered one among them (bench/checkin.py's draw)."""
    hosts = report["hypervisors"]
    rng = random.Random(f"sam-bench:move:{seed}")
    slots = [(h, g) for h in range(len(hosts)) for g in range(len(hosts[h]["guestIds"]))]
    n_moves = max(len(registered), round(len(slots) * 0.05))
    chosen = set(registered)
    extra = rng.sample([s for s in slots if s not in chosen], n_moves - len(registered))
    moves = []
    for h, g in registered + extra:
        dst = rng.randrange(len(hosts) - 1)
        moves.append((h, g, dst + 1 if dst >= h else dst))
    return moves


def entitled_from(guests: list[int], hosts: list[int], others: list[int]) -> tuple[int, int]:
    """(guests holding an entitlement from ``hosts[i]``'s derived pool, guests still holding
    one from ``others[i]``'s), as bench/checkin.py checks P5."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH e AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS x(guest, host, other)) "
            "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM subscriptions_entitlement en "
            "  JOIN subscriptions_pool p ON p.id = en.pool_id "
            "  WHERE en.system_id = e.guest AND p.requires_host_id = e.host)), "
            " count(*) FILTER (WHERE e.other <> e.host AND EXISTS (SELECT 1 FROM "
            "  subscriptions_entitlement en JOIN subscriptions_pool p ON p.id = en.pool_id "
            "  WHERE en.system_id = e.guest AND p.requires_host_id = e.other)) FROM e",
            [guests, hosts, others])
        return cursor.fetchone()


def wait_report(report: Report, timeout: float) -> float:
    start = time.perf_counter()
    while Report.objects.filter(pk=report.pk).values_list("state", flat=True)[0] not in (
            Report.State.FINISHED, Report.State.FAILED):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"report {report.pk} not applied after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def p5(n: int, hosts: int, timeout: float) -> dict:
    """performance.md P5 with certificates: 1,000 registered guests (with consumer
    identities) among 5 % of the standard report's guests move to random other hosts by one
    report; seconds from the accept until each holds an entitlement from its new host's
    derived pool and none from its old host's."""
    org, report, registered, ids = p5_world(n, hosts, 20)
    since = time.perf_counter()
    subs.enqueue_resolution(ids, "registration")
    hv_of = dict(System.objects.filter(org=org, hypervisor_id__isnull=False)
                 .values_list("hypervisor_id", "id"))
    hv_ids = [h["hypervisorId"]["hypervisorId"].lower() for h in report["hypervisors"]]
    old_hosts = [hv_of[hv_ids[h]] for h, _ in registered]
    while entitled_from(ids, old_hosts, old_hosts)[0] < len(ids):
        if time.perf_counter() - since > timeout:
            raise TimeoutError("P5 setup: the registered guests were not entitled")
        time.sleep(0.1)
    initial = time.perf_counter() - since
    wait_idle()
    analyze()
    moves = p5_moves(report, registered)
    new_hosts = [hv_of[hv_ids[dst]] for _, _, dst in moves[:len(registered)]]
    body = gen.encode(gen.with_moves(report, moves))
    start = time.perf_counter()
    accepted = reports.accept_checkin(org, body, reporter_id="p5")
    accept_s = time.perf_counter() - start
    progress, applied = [], None
    while True:
        elapsed = time.perf_counter() - start
        if applied is None and Report.objects.filter(pk=accepted.pk, state__in=(
                Report.State.FINISHED, Report.State.FAILED)).exists():
            applied = elapsed
        ok, stale = entitled_from(ids, new_hosts, old_hosts)
        if not progress or progress[-1][1:] != [ok, stale]:
            progress.append([round(elapsed, 2), ok, stale])
        if (ok == len(ids) and stale == 0 and applied is not None) or elapsed > timeout:
            break
        time.sleep(0.05)
    done = elapsed if ok == len(ids) and stale == 0 else None
    resolved = None
    if done is not None and applied is not None:
        resolved = round(max(p[0] for p in progress) - applied, 3)
    wait_idle()
    ents = Entitlement.objects.filter(system_id__in=ids)
    return {"seconds": None if done is None else round(done, 3), "met": done is not None
            and done <= TARGET_S, "moved_guests": len(moves), "moved_registered": len(ids),
            "accept_s": round(accept_s, 3), "applied_after_accept_s": applied and round(applied, 3),
            "all_reentitled_after_apply_s": resolved,
            "initial_entitlement_s": round(initial, 2),
            "progress_s_ok_stale": progress[:: max(1, len(progress) // 12)] + progress[-1:],
            "after": {"entitlements": ents.count(), "certificates": EntitlementCertificate.objects
                      .filter(system_id__in=ids).count(), "on_old_host": stale}}


def p12(n: int, timeout: float) -> dict:
    """Report apply latency, idle and while ``n`` single-guest resolutions wait (reports and
    resolution have separate queues and workers)."""
    org = new_org("p12")
    subs.create_subscription(org, "VDC", 200)
    names = [g for host in hosts_with_guests(org, 200, 10) for g in host]
    ids = bulk_systems(org, names, guest=True)[:n]

    def apply_once(tag: str) -> float:
        body = json.dumps({"hypervisors": [
            {"hypervisorId": {"hypervisorId": f"p12-{tag}-{h}"}, "name": f"p12-{tag}-{h}",
             "guestIds": [{"guestId": f"p12-{tag}-{h}-{g}"} for g in range(20)]}
            for h in range(50)]}).encode()
        start = time.perf_counter()
        report = reports.accept_checkin(org, body, reporter_id=f"p12-{tag}")
        while Report.objects.filter(pk=report.pk).values_list("state", flat=True)[0] not in (
                Report.State.FINISHED, Report.State.FAILED):
            if time.perf_counter() - start > timeout:
                return float("nan")
            time.sleep(0.02)
        return time.perf_counter() - start

    idle = [apply_once(f"idle{i}") for i in range(3)]
    from subscriptions.tasks import resolve_systems

    for system_id in ids:  # a backlog: one task per guest, as a registration burst makes
        resolve_systems.delay([system_id], "p12-backlog")
    import redis

    backlog = redis.Redis.from_url(settings.REDIS_URL).llen(settings.SAM_RESOLUTION_QUEUE)
    busy = [apply_once(f"busy{i}") for i in range(3)]
    left = redis.Redis.from_url(settings.REDIS_URL).llen(settings.SAM_RESOLUTION_QUEUE)
    return {"report": "50 hypervisors x 20 guests", "apply_idle_s": [round(x, 3) for x in idle],
            "apply_under_backlog_s": [round(x, 3) for x in busy],
            "resolution_backlog_at_start": backlog, "resolution_backlog_after": left}


def start_worker(queues: list[str], concurrency: int) -> subprocess.Popen:
    log_file = open(REPO / "var" / f"bench-res-worker-{queues[-1]}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "sam", "worker", "--pool=prefork",
         f"--concurrency={concurrency}", "-l", "WARNING", "-Q", ",".join(queues),
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--hostname", f"{queues[-1]}@%h"],
        cwd=REPO, env=dict(os.environ), stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 systems instead of 1,000")
    parser.add_argument("--cases", default="p5,p10_vdc,p10_import,p10_burst,p10_quantity,p12")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--resolution-concurrency", type=int, default=2)
    args = parser.parse_args()
    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql" or not str(name).startswith("sambench"):
        sys.exit(f"bench/resolution.py: needs a PostgreSQL database named sambench* (got {name})")
    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(settings.REDIS_URL).delete(*settings.SAM_QUEUES)
    n = 100 if args.quick else 1000
    workers = [start_worker([settings.CELERY_TASK_DEFAULT_QUEUE, settings.SAM_REPORT_QUEUE], 1),
               start_worker([settings.SAM_RESOLUTION_QUEUE], args.resolution_concurrency)]
    time.sleep(6)  # the workers boot
    out = {"meta": {"systems": n, "cpus": os.cpu_count(), "resolution": settings.SAM_RESOLUTION,
                    "resolve_batch": settings.SAM_RESOLVE_BATCH,
                    "workers": "1 report worker (concurrency 1) + 1 resolution worker "
                               f"(concurrency {args.resolution_concurrency})",
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]}}
    try:
        for case in args.cases.split(","):
            log(f"{case} ...")
            if case == "p5":
                out[case] = p5(n, 100 if args.quick else 1000, args.timeout)
            elif case == "p10_vdc":
                out[case] = p10_vdc(n, args.timeout)
            elif case == "p10_import":
                out[case] = p10_import(n, 50, args.timeout)
            elif case == "p10_burst":
                out[case] = p10_burst(n, 50, args.timeout)
            elif case == "p10_quantity":
                out[case] = p10_quantity(n, args.timeout)
            elif case == "p12":
                out[case] = p12(n, args.timeout)
            else:
                sys.exit(f"unknown case {case}")
            log(f"{case}: {out[case]}")
            wait_idle()
    finally:
        for proc in workers:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
    out["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
