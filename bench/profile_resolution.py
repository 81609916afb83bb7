"""Where the P5 resolution time goes, in-process (performance.md P5; issue 12).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench_res SAM_DATA_DIR=var/bench \\
        .venv/bin/python bench/profile_resolution.py [--guests 1000] [--profile out.prof]

Builds the P5 world in a fresh org of a ``sambench*`` database: a VDC subscription, the
standard report (1,000 hypervisors x 20 guests) applied, 1,000 registered guests (the first two
guests of hosts 0-499) with a consumer identity each, so that entitlement certificates are
issued, and entitled by one resolution. Then a report moves 5 % of the guests (every
registered one to a random other host, seeded as bench/checkin.py does) and the resolution
tasks it enqueues run here, one after the other, as a worker would run them. Prints, per
task and in total: seconds, SQL statements, time in SQL, and the time spent in the batch's
phases (decide, write, stored compliance, certificates). ``--profile`` writes cProfile data.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
os.environ["SAM_TASKS_EAGER"] = "0"
os.environ.setdefault("SAM_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import report_gen as gen  # noqa: E402
import resolution as world  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from hypervisors import ingest  # noqa: E402
from orgs.models import System  # noqa: E402
from subscriptions import batch, certificates, compliance, tasks  # noqa: E402
from subscriptions import services as subs  # noqa: E402
from subscriptions.models import Entitlement, EntitlementCertificate  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Meter:
    """Statements and SQL time (an execute wrapper), and seconds per named phase."""

    def __init__(self):
        self.statements = 0
        self.sql_s = 0.0
        self.by_kind: dict[str, list] = defaultdict(lambda: [0, 0.0])
        self.phases: dict[str, float] = defaultdict(float)

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - start
            self.statements += 1
            self.sql_s += took
            kind = " ".join(sql.split()[:4])[:60]
            self.by_kind[kind][0] += 1
            self.by_kind[kind][1] += took

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.phases[label] += time.perf_counter() - start

        setattr(owner, name, timed)


@contextmanager
def collected():
    """Resolution tasks are collected (as the broker would hold them) instead of sent."""
    sent: list[tuple[list[int], str]] = []
    original = tasks.resolve_systems.delay
    tasks.resolve_systems.delay = lambda ids, trigger="heal": sent.append((list(ids), trigger))
    try:
        yield sent
    finally:
        tasks.resolve_systems.delay = original


def run_tasks(sent, meter: Meter, profile: cProfile.Profile | None) -> list[dict]:
    rows = []
    while sent:
        ids, trigger = sent.pop(0)
        before = (meter.statements, meter.sql_s, dict(meter.phases))
        start = time.perf_counter()
        if profile:
            profile.enable()
        outcome = tasks.resolve_systems(ids, trigger)
        if profile:
            profile.disable()
        rows.append({"systems": len(ids), "trigger": trigger, "outcome": outcome,
                     "seconds": round(time.perf_counter() - start, 3),
                     "statements": meter.statements - before[0],
                     "sql_s": round(meter.sql_s - before[1], 3),
                     "phases_s": {k: round(v - before[2].get(k, 0.0), 3)
                                  for k, v in meter.phases.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guests", type=int, default=1000, help="registered guests that move")
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--per-host", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", help="write cProfile data of the move's tasks here")
    args = parser.parse_args()
    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql" or not str(name).startswith("sambench"):
        sys.exit(f"bench/profile_resolution.py: needs a PostgreSQL database named sambench* (got {name})")
    call_command("migrate", verbosity=0)
    meter = Meter()
    meter.wrap(batch, "_resolve_org", "batch")
    meter.wrap(batch, "_write_changes", "batch.write")
    meter.wrap(compliance, "refresh", "compliance")
    meter.wrap(certificates, "sync", "certificates")
    out = {"meta": {"loadavg_start": [round(x, 2) for x in os.getloadavg()],
                    "resolution": django.conf.settings.SAM_RESOLUTION,
                    "resolve_batch": django.conf.settings.SAM_RESOLVE_BATCH}}
    with collected() as sent, connection.execute_wrapper(meter):
        log("building the P5 world ...")
        start = time.perf_counter()
        org, report, registered, guest_ids = world.p5_world(args.guests, args.hosts,
                                                            args.per_host, args.seed)
        subs.enqueue_resolution(guest_ids, "registration")  # outside a transaction: sent now
        out["setup_s"] = round(time.perf_counter() - start, 2)
        log(f"initial resolution of {len(guest_ids)} guests ...")
        initial = run_tasks(sent, meter, None)
        out["initial"] = {"seconds": round(sum(r["seconds"] for r in initial), 2),
                          "tasks": initial}
        out["certificates_before"] = EntitlementCertificate.objects.filter(
            system_id__in=guest_ids).count()
        moves = world.p5_moves(report, registered, args.seed)
        entries = ingest.parse_entries(gen.with_moves(report, moves))
        log(f"applying the move of {len(moves)} guests ...")
        start = time.perf_counter()
        applied = ingest.apply_entries(org, entries)
        out["apply_s"] = round(time.perf_counter() - start, 3)
        out["enqueued"] = {"systems": len(applied.resolved), "tasks": len(sent)}
        meter.by_kind.clear()
        profile = cProfile.Profile() if args.profile else None
        log("resolving the moved guests ...")
        moved = run_tasks(sent, meter, profile)
        out["move"] = {"seconds": round(sum(r["seconds"] for r in moved), 3),
                       "statements": sum(r["statements"] for r in moved),
                       "sql_s": round(sum(r["sql_s"] for r in moved), 3), "tasks": moved,
                       "slowest_sql": sorted(([k, v[0], round(v[1], 3)] for k, v in
                                              meter.by_kind.items()), key=lambda r: -r[2])[:12]}
        if profile:
            profile.dump_stats(args.profile)
    new_host = {g: h for g, h in System.objects.filter(id__in=guest_ids)
                .values_list("id", "current_host_id")}
    right = set(Entitlement.objects.filter(system_id__in=guest_ids)
                .values_list("system_id", "pool__requires_host_id"))
    out["check"] = {
        "entitled_from_new_host": sum(1 for g, h in new_host.items() if (g, h) in right),
        "entitlements": len(right),
        "certificates": EntitlementCertificate.objects.filter(system_id__in=guest_ids).count()}
    out["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
