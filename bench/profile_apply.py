#!/usr/bin/env python3
"""Where the apply time goes: one report applied in-process, every SQL statement timed.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench SAM_DATA_DIR=var/bench \\
    SAM_TASKS_EAGER=1 python bench/profile_apply.py [--hypervisors 1000 --guests 20] [--resolve-org KEY]

A diagnostic next to checkin.py, not a target measurement. It imports sam (repository on
``sys.path``), creates a fresh org in the database of ``DATABASE_URL`` (use a ``sambench*``
one) and applies the synthetic report with ``hypervisors.ingest.apply_entries`` inside an
outer transaction, so the COMMIT (where PostgreSQL runs the deferred foreign-key checks of
Django's constraints) is timed on its own. Statements are timed with Django's
``execute_wrapper``; COPY goes through the raw psycopg cursor, so it is the remainder.

``--move N``: also P5's move report (5 % of the guests, N registered guests among them) into a
fresh org whose statistics are stale, as on the server right after the org's first report.

``--resolve-org KEY``: also time ``resolve_system`` of registered guests of that org (e.g. the
P5 org of a checkin.py run): statements and seconds per guest.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time

import report_gen as gen

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Timer:
    def __init__(self):
        self.rows: list[tuple[float, str]] = []

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.rows.append((time.perf_counter() - start, " ".join(sql.split())))

    def top(self, n: int = 12) -> list[dict]:
        return [{"s": round(s, 4), "sql": sql[:230]} for s, sql in sorted(self.rows, reverse=True)[:n]]


def apply_once(org, body: bytes, deferred: bool) -> dict:
    from django.db import connection, transaction

    from hypervisors import ingest

    start = time.perf_counter()
    data = ingest.load_body(body)
    entries = ingest.parse_entries(data)
    parsed = time.perf_counter()
    timer = Timer()
    with connection.execute_wrapper(timer):
        with transaction.atomic():
            if not deferred:
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            t0 = time.perf_counter()
            ingest.apply_entries(org, entries, reporter_id="profile")
            t1 = time.perf_counter()
        t2 = time.perf_counter()
    in_sql = sum(s for s, _ in timer.rows)
    return {"constraints": "deferred (as in the server)" if deferred else "SET CONSTRAINTS ALL IMMEDIATE",
            "parse_s": round(parsed - start, 3), "apply_entries_s": round(t1 - t0, 3),
            "commit_s": round(t2 - t1, 3), "statements": len(timer.rows),
            "statements_s": round(in_sql, 3),
            "copy_and_python_s": round((t1 - t0) - in_sql, 3), "top": timer.top()}


def apply_as_worker(org, body: bytes) -> dict:
    """``reports.apply_report`` on a stored CREATED report, as the Celery task runs it: also
    decompression, parsing, the job row's resultData/diff and the commit."""
    import zlib

    from django.db import connection

    from hypervisors import reports
    from hypervisors.models import Report

    report = Report.objects.create(org=org, reporter_id="profile-worker", payload=zlib.compress(body, 1),
                                   payload_size=len(body), state=Report.State.CREATED)
    from hypervisors import ingest

    timer = Timer()
    sent: list[int] = []
    send_timeline, ingest.send_timeline = ingest.send_timeline, sent.append  # timed on its own
    try:
        with connection.execute_wrapper(timer):
            start = time.perf_counter()
            outcome = reports.apply_report(report.id)
            total = time.perf_counter() - start
    finally:
        ingest.send_timeline = send_timeline
    timeline_s = None
    if sent:
        start = time.perf_counter()
        ingest.write_pending_timelines(sent[0])
        timeline_s = round(time.perf_counter() - start, 3)
    report.refresh_from_db()
    save = [s for s, sql in timer.rows if sql.startswith('UPDATE "hypervisors_report"')]
    return {"how": "reports.apply_report (worker path)", "outcome": outcome, "total_s": round(total, 3),
            "started_to_finished_s": round((report.finished - report.started).total_seconds(), 3),
            "after_finished_s (job row save + commit)": round(
                total - (report.finished - report.started).total_seconds(), 3),
            "job_row_update_s": round(sum(save), 3),
            "deferred_timeline_written_after_s": timeline_s,
            "result_and_diff_json_bytes": len(json.dumps(report.result)) + len(json.dumps(report.diff)),
            "statements": len(timer.rows), "top": timer.top(6)}


def profile_move(body: bytes, report: dict, registered: int, seed: int) -> dict:
    """P5's report in-process: the standard report into a fresh org, ``registered`` guests
    written in bulk (as registration leaves them: current host set, no resolution), then 5 %
    of the guests moved (all registered ones among them), every statement timed. Nothing is
    ANALYZEd in between, as on a server where autovacuum has not caught up yet."""
    import random
    import secrets as _secrets

    from django.db import connection
    from django.utils import timezone

    from hypervisors import ingest
    from orgs.models import System
    from orgs.services import create_org

    org = create_org(f"prof-move-{_secrets.token_hex(3)}", "profile move")
    ingest.apply_entries(org, ingest.parse_entries(json.loads(body)), reporter_id="move")
    hosts = report["hypervisors"]
    slots = [(h, g) for h in range(len(hosts)) for g in range(len(hosts[h]["guestIds"]))]
    chosen = slots[:registered]  # the first guests of the first hosts
    now = timezone.now()
    rows = []
    for n, (h, g) in enumerate(chosen):
        facts = {"virt.is_guest": "true", "virt.uuid": hosts[h]["guestIds"][g]["guestId"]}
        rows.append(System(org=org, name=f"vm{n:05d}", facts=facts, installed_products=[],
                           registered_at=now, last_checkin=now, **ingest.identity(facts)))
    System.objects.bulk_create(rows)
    ids = list(System.objects.filter(org=org, is_guest=True).values_list("id", flat=True))
    ingest.refresh_current_hosts_of(org, ids, now)
    rng = random.Random(f"sam-bench:move:{seed}")
    extra = rng.sample([s for s in slots if s not in set(chosen)],
                       max(0, round(len(slots) * 0.05) - len(chosen)))
    moves = []
    for h, g in chosen + extra:
        dst = rng.randrange(len(hosts) - 1)
        moves.append((h, g, dst + 1 if dst >= h else dst))
    moved = gen.with_moves(report, moves)
    timer = Timer()
    with connection.execute_wrapper(timer):
        start = time.perf_counter()
        applied = ingest.apply_entries(org, ingest.parse_entries(moved), reporter_id="move")
        total = time.perf_counter() - start
    return {"how": "P5's move report in-process (fresh org, stale statistics)",
            "moved_guests": len(moves), "registered_guests": len(ids),
            "resolved": len(applied.resolved), "moved_in_diff": len(applied.moved),
            "total_s": round(total, 3), "statements": len(timer.rows),
            "statements_s": round(sum(sec for sec, _ in timer.rows), 3), "top": timer.top(8)}


def profile_resolution(org_key: str, count: int) -> dict:
    from django.db import connection

    from orgs.models import System
    from orgs.services import get_org
    from subscriptions import services

    org = get_org(org_key)
    ids = list(System.objects.filter(org=org, is_guest=True).order_by("id")
               .values_list("id", flat=True)[:count])
    timer = Timer()
    per_guest = []
    with connection.execute_wrapper(timer):
        for system_id in ids:
            before = len(timer.rows)
            start = time.perf_counter()
            services.resolve_system(system_id, "profile")
            per_guest.append((time.perf_counter() - start, len(timer.rows) - before))
    seconds = sorted(s for s, _ in per_guest)
    return {"guests": len(ids), "note": "guests already entitled: the no-change resolution",
            "median_s": round(seconds[len(seconds) // 2], 4),
            "statements_per_guest": sorted({n for _, n in per_guest}),
            "top": timer.top(8)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hypervisors", type=int, default=gen.STANDARD[0])
    parser.add_argument("--guests", type=int, default=gen.STANDARD[1])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resolve-org", help="org whose registered guests to resolve (no change)")
    parser.add_argument("--resolve-count", type=int, default=50)
    parser.add_argument("--move", type=int, default=0, metavar="N",
                        help="also P5's move report with N registered guests among the moved")
    parser.add_argument("--repeat", type=int, default=1,
                        help="apply that many times each way (deferred / immediate), alternating")
    args = parser.parse_args()
    if "sambench" not in os.environ.get("DATABASE_URL", ""):
        parser.error("set DATABASE_URL to a sambench* database: this creates orgs in it")
    sys.path.insert(0, REPO_DIR)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
    import django

    django.setup()
    from orgs.services import create_org

    report = gen.make_report(args.hypervisors, args.guests, args.seed)
    body = gen.encode(report)
    out: dict = {"hypervisors": args.hypervisors, "guests": args.hypervisors * args.guests,
                 "body_bytes": len(body), "runs": []}
    for _ in range(args.repeat):
        for deferred in (True, False):
            org = create_org(f"prof-{secrets.token_hex(3)}", "profile")
            out["runs"].append(apply_once(org, body, deferred))
    out["runs"].append(apply_as_worker(create_org(f"prof-{secrets.token_hex(3)}", "profile"), body))
    if args.move:
        out["move"] = profile_move(body, report, args.move, args.seed)
    if args.resolve_org:
        out["resolution"] = profile_resolution(args.resolve_org, args.resolve_count)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
