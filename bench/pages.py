"""P8: web pages with the large report loaded — latency and SQL statements per page.

Runs in-process through Django's full request stack (middleware, auth, templates) against the
database in ``DATABASE_URL`` — e.g. ``sambench`` after ``bench/run.sh``, whose P2 large org holds
the 17,000-hypervisor report. Prints JSON.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sambench \\
        .venv/bin/python bench/pages.py [--org KEY] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
os.environ.setdefault("SAM_DATA_DIR", str(ROOT / "var" / "bench"))
os.environ["SAM_TASKS_EAGER"] = "1"  # no broker needed: the pages only read

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from orgs.models import Organization, System  # noqa: E402

TARGET_P50_MS = 200


def _largest_org() -> Organization:
    row = (System.objects.filter(hypervisor_id__isnull=False).values("org")
           .annotate(n=Count("id")).order_by("-n").first())
    if row is None:
        sys.exit("no hypervisors in this database: run bench/run.sh first (or pass --org)")
    return Organization.objects.get(pk=row["org"])


def measure(client: Client, url: str, runs: int) -> dict:
    client.get(url)  # warm caches and templates, as a second visitor would find them
    times, statements = [], []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}")
        statements.append(len(queries))
    return {"url": url, "p50_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1), "statements": sorted(set(statements)),
            "met": statistics.median(times) <= TARGET_P50_MS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--org", help="organization key (default: the one with most hypervisors)")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["*"]
    org = Organization.objects.get(key=args.org) if args.org else _largest_org()
    user, _ = get_user_model().objects.get_or_create(username="bench-pages",
                                                     defaults={"is_staff": True})
    client = Client()
    client.force_login(user)
    hypervisor = System.objects.filter(org=org, hypervisor_id__isnull=False).order_by("id").first()
    guest = (System.objects.filter(org=org, is_guest=True).order_by("id").first()
             or System.objects.filter(org=org).order_by("id").first())
    pages = {
        "dashboard": f"/o/{org.key}/",
        "hypervisor_list": f"/o/{org.key}/hypervisors/",
        "hypervisor_list_page_100": f"/o/{org.key}/hypervisors/?page=100",
        "hypervisor_detail": f"/o/{org.key}/hypervisors/{hypervisor.uuid}/",
        "system_list": f"/o/{org.key}/systems/",
        "system_detail": f"/o/{org.key}/systems/{guest.uuid}/",
        "api_hypervisors": f"/api/v1/orgs/{org.key}/hypervisors/",
    }
    result = {
        "org": org.key,
        "hypervisors": System.objects.filter(org=org, hypervisor_id__isnull=False).count(),
        "target_p50_ms": TARGET_P50_MS,
        "pages": {name: measure(client, url, args.runs) for name, url in pages.items()},
    }
    result["met"] = all(p["met"] and len(p["statements"]) == 1 for p in result["pages"].values())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
