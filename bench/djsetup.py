"""Setup and counting that need sam's own code, imported in the benchmark's process.

Only used with ``checkin.py --setup-django``: the repository goes on ``sys.path`` and Django
starts with ``DJANGO_SETTINGS_MODULE=sam.settings`` and the same ``DATABASE_URL`` /
``REDIS_URL`` / ``SAM_DATA_DIR`` as the server, so what is created here is what the server
sees, and the resolution tasks enqueued here (guest registration) go to the real workers.
Nothing here is timed as a target; it builds the world the targets are measured in.
"""

from __future__ import annotations

import base64
import os
import sys
import time

_READY = False

# Products as in tests/scenario.py: an unlimited-guest VDC subscription whose derived product
# RHEL-G provides RHEL (479), which the registered guests have installed.
GUEST_PRODUCT = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server"}]


def setup(repo: str) -> dict:
    """Start Django from ``repo``; returns facts about the configuration for the report."""
    global _READY
    if not _READY:
        if repo not in sys.path:
            sys.path.insert(0, repo)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")
        import django

        django.setup()
        _READY = True
    from django.conf import settings
    from django.db import connection

    return {"tasks_eager": bool(settings.CELERY_TASK_ALWAYS_EAGER), "db_vendor": connection.vendor,
            "db_name": connection.settings_dict["NAME"], "resolve_batch": settings.SAM_RESOLVE_BATCH}


def create_org(key: str, user: str, password: str) -> None:
    """A new organization and ``user`` with the reporter role in it (created if missing).

    The password is only set when it does not already match: setting it again would store a
    new salted hash, and the server's per-process credential cache would then pay a PBKDF2
    verification (hundreds of ms) inside the next measured request."""
    from django.contrib.auth import get_user_model

    from orgs.services import OPERATOR, set_member_role
    from orgs.services import create_org as make

    org = make(key, f"sam bench {key}")
    existing = get_user_model().objects.filter(username=user).first()
    keep = existing is not None and existing.check_password(password)
    set_member_role(org, user, "reporter", password=None if keep else password, actor=OPERATOR)


def queue_idle(timeout: float) -> float:
    """Wait until the workers have nothing left: the broker queue is empty and no worker has
    an active or reserved task. Returns the seconds waited (raises TimeoutError)."""
    from amqp.exceptions import ChannelError
    from django.conf import settings

    from sam.celery import app

    start = time.perf_counter()
    quiet = 0
    while True:
        waiting = 0
        with app.connection_for_write() as conn:
            for queue in settings.SAM_QUEUES:  # reports, resolution and the rest
                try:
                    waiting += conn.default_channel.queue_declare(
                        queue=queue, passive=True).message_count
                except ChannelError:  # Redis: an empty queue is no key at all
                    pass
        busy = 0
        if waiting == 0:
            inspect = app.control.inspect(timeout=1.0)
            for answer in (inspect.active() or {}, inspect.reserved() or {}):
                busy += sum(len(tasks) for tasks in answer.values())
        quiet = quiet + 1 if waiting == 0 and busy == 0 else 0
        if quiet >= 2:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"workers still busy after {timeout:.0f} s ({waiting} queued, {busy} running)")
        time.sleep(0.5)


def create_vdc(org_key: str, hosts: int) -> None:
    """A VDC subscription (unlimited guests per host, derived RHEL-G) for ``hosts`` hosts."""
    from orgs.services import get_org
    from subscriptions import services as subs

    org = get_org(org_key)
    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "RHEL for Virtual Datacenters (guest)", provided=["479"])
    subs.create_product(org, "VDC", "Virtual Datacenter", attributes={"virt_limit": "unlimited"},
                        derived="RHEL-G")
    subs.create_subscription(org, "VDC", hosts)


def register_guests(org_key: str, guest_uuids: list[str]) -> float:
    """Register each guest as subscription-manager would (one ``register_system`` each: its
    host is linked and its resolution enqueued to the workers). Returns the seconds it took."""
    from hypervisors.services import register_system
    from orgs.services import get_org

    org = get_org(org_key)
    start = time.perf_counter()
    for n, guest_uuid in enumerate(guest_uuids):
        register_system(org, f"vm{n:05d}.bench.example.com",
                        facts={"virt.is_guest": "true", "virt.uuid": guest_uuid,
                               "cpu.cpu_socket(s)": "1"},
                        installed_products=GUEST_PRODUCT)
    return time.perf_counter() - start


def count_request_statements(method: str, path: str, user: str, password: str) -> dict:
    """Run one API request in this process through Django's full stack (middleware, auth,
    view) and capture every SQL statement it sends. The request runs twice and the second
    one is reported: the first also pays the password hash and its cache fill."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    client = Client()
    result: dict = {}
    for attempt in ("cold", "warm"):
        with CaptureQueriesContext(connection) as ctx:
            start = time.perf_counter()
            response = client.generic(method, path, HTTP_AUTHORIZATION=auth)
            elapsed = time.perf_counter() - start
        result[attempt] = {"status": response.status_code, "statements": len(ctx.captured_queries),
                           "seconds": round(elapsed, 4),
                           "sql": [_short(q["sql"]) for q in ctx.captured_queries]}
    return result


def _short(sql: str, limit: int = 160) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= limit else sql[:limit - 3] + "..."
