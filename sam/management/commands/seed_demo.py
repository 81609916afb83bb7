"""``manage.py seed_demo [--org ACME]``: the demo world of ``./scripts/demo``.

One org with a virtual data-center subscription, a 4-guest subscription and a socket-stacked
physical-only one; three hypervisors (reported as virt-who would) and registered guests in every
coverage state; 90 days of coverage history for the dashboard's chart. Everything but that
history goes through the services, one step at a time, with background tasks run in this
process: the engine resolves each system as it registers, so the order below decides which host
takes which subscription (see ``_build``). Idempotent: an existing org is left as it is; only the
admin user's password is reset.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from hypervisors import services as mapping
from orgs.models import Organization, System
from orgs.services import OPERATOR, create_org, set_member_role
from sam.celery import app as celery_app
from sam.management.commands._util import command_error
from subscriptions import coverage
from subscriptions import services as subs
from subscriptions.explain import explain
from subscriptions.models import CoverageSnapshot, Entitlement, Pool, Product, Subscription

ADMIN = "admin"
RHEL = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server", "version": "9.4",
         "arch": "x86_64"}]
# Stable ids: the same demo always has the same UUIDs (uuid5 of the host name).
NAMESPACE = uuid.UUID("5a3e0f43-5f0b-4f39-9d5b-7a0c3c6e1d10")


def _uuid(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


@contextmanager
def _tasks_in_process():
    """Run enqueued resolution right after each commit, in this process, even when workers are
    configured: the demo's coverage states depend on the order systems are resolved in.
    Celery's per-task INFO lines would bury the summary and the password: quiet them meanwhile."""
    previous = celery_app.conf.task_always_eager
    trace = logging.getLogger("celery.app.trace")
    level = trace.level
    celery_app.conf.task_always_eager = True
    trace.setLevel(max(logging.WARNING, trace.getEffectiveLevel()))
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = previous
        trace.setLevel(level)


class Command(BaseCommand):
    help = ("Load the demo organization (hypervisors, guests in every coverage state, "
            "subscriptions) and an 'admin' superuser; prints the admin's new password. "
            "Run again: the data is kept, only the password is reset.")

    def add_arguments(self, parser):
        parser.add_argument("--org", default="ACME", help="key of the demo organization (ACME)")

    def handle(self, *args, org: str, **options):
        key = str(org).strip()
        org_obj = Organization.objects.filter(key=key).first()
        if org_obj is not None:
            self.stdout.write(f"Demo organization {key} already exists: its data was left as it is.")
        else:
            org_obj = self._create(key)
            self.stdout.write(self.style.SUCCESS(f"Demo data loaded into organization {key}."))
        self._summary(org_obj)
        password = self._admin(org_obj)
        self.stdout.write("")
        self.stdout.write("Admin URL: /admin/ on this server (./scripts/demo: https://localhost:8443/admin/)")
        self.stdout.write(f"Username: {ADMIN}")
        self.stdout.write(f"Admin password: {password}")

    # --- building -------------------------------------------------------------------------

    def _create(self, key: str) -> Organization:
        try:
            org = create_org(key, f"{key} Corp (demo)")
        except ValidationError as exc:
            raise command_error(exc) from None
        try:
            with _tasks_in_process():
                _build(org, domain=f"{key.lower()}.example")
            _coverage_history(org)
        except BaseException as exc:
            _discard(org)  # leave nothing half-made
            if isinstance(exc, ValidationError):
                raise CommandError(f"Demo data could not be loaded: {' '.join(exc.messages)}") from exc
            raise
        return org

    @transaction.atomic
    def _admin(self, org: Organization) -> str:
        password = secrets.token_urlsafe(12)
        user = set_member_role(org, ADMIN, "admin", password=password, actor=OPERATOR)
        User = get_user_model()
        User.objects.filter(pk=user.pk).update(is_superuser=True, is_staff=True, is_active=True)
        return password

    # --- summary --------------------------------------------------------------------------

    def _summary(self, org: Organization) -> None:
        systems = list(System.objects.filter(org=org).select_related("org", "current_host")
                       .order_by("type", "name", "id"))
        hypervisors = [s for s in systems if s.type == System.Type.HYPERVISOR]
        registered = [s for s in systems if s.installed_products]
        counts: Counter[str] = Counter()
        lines = []
        for system in registered:
            state = subs.compliance_for(system).status
            counts[state] += 1
            why = "; ".join(item.message for item in explain(system))
            kind = "guest" if system.is_guest else "physical"
            lines.append(f"  {state:<8} {system.name} ({kind}): {why}")
        self.stdout.write(
            f"{org.key}: {len(hypervisors)} hypervisors, {len(registered)} registered systems: "
            f"{counts['valid']} valid, {counts['partial']} partial, {counts['invalid']} invalid"
            + (f", {counts['disabled']} disabled" if counts["disabled"] else "")
        )
        for line in lines:
            self.stdout.write(line)


HISTORY_DAYS = 90


@transaction.atomic
def _coverage_history(org: Organization, days: int = HISTORY_DAYS) -> None:
    """Daily snapshots of the last ``days`` days, so the chart shows on the first sign-in.

    Today's is the real one (``coverage.record_snapshot``); the earlier days are made up, as the
    periodic task would have recorded them while the org grew: from 5 guests (3 covered) to 11,
    a new VM temporarily covered now and then, the second hypervisor subscribed 45 days ago.
    """
    today = timezone.localdate()
    history = []
    for ago in range(days - 1, 0, -1):
        progress = (days - 1 - ago) / (days - 2)
        total = 5 + round(6 * progress)
        temporary = 1 if ago % 11 == 0 else 0
        covered = min(total - temporary, 3 + round(4 * progress))
        subscribed = 2 if ago <= 45 else 1
        history.append(CoverageSnapshot(
            org=org, day=today - timedelta(days=ago), guests_covered=covered,
            guests_temporary=temporary, guests_uncovered=total - covered - temporary,
            hypervisors_with=subscribed, hypervisors_without=3 - subscribed))
    CoverageSnapshot.objects.bulk_create(history, ignore_conflicts=True)
    coverage.record_snapshot(org, today)


@transaction.atomic
def _discard(org: Organization) -> None:
    """Delete the org and everything in it. ``Organization.delete()`` alone is refused once
    subscriptions exist (products are PROTECTed by subscriptions, pools and derived products),
    so the accounting rows go first, leaves to roots."""
    Entitlement.objects.filter(org=org).delete()
    Pool.objects.filter(org=org).delete()
    Subscription.objects.filter(org=org).delete()
    Product.objects.filter(org=org).update(derived_product=None)
    Product.objects.filter(org=org).delete()
    Organization.objects.filter(pk=org.pk).delete()


def _hypervisor(org: Organization, name: str, kind: str, cluster: str, sockets: int,
                guests: list[str]) -> System:
    dmi = _uuid(name)
    facts = {
        "cpu.cpu_socket(s)": str(sockets),
        "hypervisor.type": kind,
        "hypervisor.cluster": cluster,
        "dmi.system.uuid": dmi,
    }
    system, _ = mapping.report_hypervisor(org, dmi, name=name, facts=facts, guests=guests,
                                          reporter_id="virt-who-demo", source="seed_demo")
    return system


def _guest(org: Organization, name: str, registered_at=None) -> System:
    facts = {
        "virt.is_guest": "true",
        "virt.uuid": _uuid(name),
        "network.fqdn": name,
        "cpu.cpu_socket(s)": "1",
        "uname.machine": "x86_64",
        "distribution.name": "Red Hat Enterprise Linux",
        "distribution.version": "9.4",
    }
    return mapping.register_system(org, name, facts=facts, installed_products=RHEL,
                                   registered_at=registered_at, trigger="seed_demo")


def _build(org: Organization, domain: str) -> None:
    """The order matters; each registration is resolved when it commits:

    1. esx01's guests register first: esx01 takes the only VDC (hosts prefer unlimited guests).
    2. esx02's five guests: VDC is used up, so esx02 takes RHEL-4G; four guests inherit its
       derived pool (4 guests), the fifth finds it exhausted.
    3. kvm01's guest: both subscriptions with virtual guests are used up -> invalid.
    4. Guests no hypervisor reports: one new (temporary unmapped entitlement, partial), one
       registered 3 days ago (treated as physical; RHEL-4G's normal pool is used up -> invalid).
    5. A 4-socket physical system: only RHEL-PHYS is left for it (2 units of 2 sockets each).
       Registered earlier, it would have preferred RHEL-4G's normal pool (1 unit < 2 units).
    6. app03 is dropped from esx01's report: it keeps its entitlement, "host unknown since".
    """
    now = timezone.now()
    start, end = now - timedelta(days=30), now + timedelta(days=365)

    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "Red Hat Enterprise Linux for Virtual Datacenters (guest)",
                        provided=["479"])
    subs.create_product(org, "VDC", "Red Hat Enterprise Linux for Virtual Datacenters",
                        attributes={"virt_limit": "unlimited"}, derived="RHEL-G")
    subs.create_product(org, "RHEL-4G", "Red Hat Enterprise Linux Server with 4 guests",
                        attributes={"virt_limit": "4"}, provided=["479"])
    subs.create_product(org, "RHEL-PHYS", "Red Hat Enterprise Linux Server, physical (2 sockets)",
                        attributes={"physical_only": "true", "stacking_id": "RHEL-PHYS",
                                    "sockets": "2", "multi-entitlement": "yes"},
                        provided=["479"])
    subs.create_subscription(org, "VDC", 1, start=start, end=end, contract_number="10001",
                             account_number="5550001", order_number="ORD-VDC-1")
    subs.create_subscription(org, "RHEL-4G", 1, start=start, end=end, contract_number="10002",
                             account_number="5550001", order_number="ORD-4G-1")
    subs.create_subscription(org, "RHEL-PHYS", 4, start=start, end=end, contract_number="10003",
                             account_number="5550001", order_number="ORD-PHYS-1")

    def fqdn(short: str) -> str:
        return f"{short}.{domain}"

    esx01_guests = [fqdn(n) for n in ("web01", "web02", "app03")]
    esx02_guests = [fqdn(f"dev0{i}") for i in range(1, 6)]
    kvm01_guests = [fqdn("test01")]
    # Reported but never registered VMs (templates, appliances): mapped, not accounted.
    unregistered = {"esx01": ["vcsa", "template-rhel9"], "esx02": ["build-runner"],
                    "kvm01": ["ipa01"]}

    def report(short: str, kind: str, cluster: str, sockets: int, guests: list[str]) -> System:
        listed = [_uuid(g) for g in guests] + [_uuid(fqdn(u)) for u in unregistered[short]]
        return _hypervisor(org, fqdn(short), kind, cluster, sockets, listed)

    report("esx01", "VMware ESXi", "prod-cluster", 2, esx01_guests)
    report("esx02", "VMware ESXi", "dev-cluster", 2, esx02_guests)
    report("kvm01", "QEMU", "lab", 1, kvm01_guests)

    for name in esx01_guests + esx02_guests + kvm01_guests:
        _guest(org, name)
    _guest(org, fqdn("new-vm01"))
    _guest(org, fqdn("old-vm01"), registered_at=now - timedelta(days=3))
    mapping.register_system(
        org, fqdn("bare01"),
        facts={"cpu.cpu_socket(s)": "4", "dmi.system.uuid": _uuid(fqdn("bare01")),
               "uname.machine": "x86_64", "network.fqdn": fqdn("bare01"),
               "virt.is_guest": "false"},
        installed_products=RHEL, trigger="seed_demo",
    )
    # virt-who's next report of esx01 no longer lists app03 (a misreport, or the VM moved to a
    # host nobody reports): the guest keeps its entitlement and shows "host unknown since".
    report("esx01", "VMware ESXi", "prod-cluster", 2, esx01_guests[:2])
