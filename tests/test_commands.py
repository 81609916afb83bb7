"""Operator commands: createorg, addmember, run_sweeps, seed_demo (README "Operator commands")."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

from hypervisors import reports
from hypervisors.models import GuestHostInterval, GuestId, Report
from orgs.models import Organization, OrganizationUserPermission, System
from orgs.services import member_role
from sam import locks
from sam.celery import app as celery_app
from sam.management.commands import seed_demo as seed_module
from subscriptions import services as subs
from subscriptions.explain import explain
from subscriptions.models import (
    CoverageSnapshot,
    Entitlement,
    EntitlementEvent,
    Pool,
    Product,
    Subscription,
)
from tests.scenario import acme, ents, guest, physical, reload, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
User = get_user_model()


def run(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


def snapshot() -> tuple:
    """Row counts a failed command must leave untouched."""
    return (Organization.objects.count(), User.objects.count(),
            OrganizationUserPermission.objects.count(), System.objects.count(),
            Product.objects.count(), Subscription.objects.count(), Pool.objects.count(),
            Entitlement.objects.count(), EntitlementEvent.objects.count(), GuestId.objects.count(),
            GuestHostInterval.objects.count())


# --- createorg -------------------------------------------------------------------------------

def test_createorg_creates_and_prints_the_org():
    out = run("createorg", "ACME", name="ACME Corp")
    org = Organization.objects.get(key="ACME")
    assert org.name == "ACME Corp"
    assert "Created organization ACME (ACME Corp)" in out
    assert "unmapped guest window 24 h" in out and "lifetime 7 d" in out


def test_createorg_settings_flags():
    run("createorg", "lab-2", name="  Lab  ", unmapped_window_hours=48, unmapped_lifetime_days=10,
        simple_content_access=True)
    org = Organization.objects.get(key="lab-2")
    assert org.name == "Lab"
    assert org.unmapped_window == timedelta(hours=48)
    assert org.unmapped_lifetime == timedelta(days=10)
    assert org.content_access_mode == Organization.ContentAccess.SCA


@pytest.mark.parametrize("key, name, extra, message", [
    ("bad key", "X", {}, "Organization key 'bad key' is invalid"),
    ("_under", "X", {}, "Organization key '_under' is invalid"),
    ("ok", "   ", {}, "name must not be empty"),
    ("ok", "X", {"unmapped_window_hours": -1}, "unmapped_window must be a duration of zero or more"),
    ("ok", "X", {"unmapped_lifetime_days": 0}, "unmapped_lifetime must be a positive duration"),
])
def test_createorg_bad_input_is_a_command_error(key, name, extra, message):
    before = snapshot()
    with pytest.raises(CommandError, match=re.escape(message)):
        run("createorg", key, name=name, **extra)
    assert snapshot() == before


def test_createorg_duplicate():
    run("createorg", "ACME", name="ACME Corp")
    before = snapshot()
    with pytest.raises(CommandError, match="Organization 'ACME' already exists"):
        run("createorg", "ACME", name="Other")
    assert snapshot() == before
    assert Organization.objects.get(key="ACME").name == "ACME Corp"


def test_createorg_requires_name():
    with pytest.raises(CommandError, match="--name"):
        run("createorg", "ACME")


def test_command_error_exits_non_zero_with_the_message(tmp_path):
    """Through manage.py: message on stderr, exit status 1 (the key fails before any query)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["SAM_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "manage.py", "createorg", "bad key", "--name", "X"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "CommandError: Organization key 'bad key' is invalid" in proc.stderr


# --- addmember -------------------------------------------------------------------------------

@pytest.fixture
def org():
    return Organization.objects.create(key="ACME", name="ACME Corp")


def test_addmember_creates_user_with_password_from_stdin(org):
    out = run("addmember", "ACME", "alice", role="admin", password_stdin=True,
              stdin=io.StringIO("  correct-horse-battery  \nignored second line\n"))
    user = User.objects.get(username="alice")
    assert member_role(org, user) == "admin"
    assert authenticate(username="alice", password="correct-horse-battery") == user
    assert "Created user alice with the password from stdin; role admin in organization ACME" in out


def test_addmember_reads_sys_stdin(org, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("another-good-password\n"))
    run("addmember", "ACME", "bob", role="reporter", password_stdin=True)
    user = authenticate(username="bob", password="another-good-password")
    assert user is not None and member_role(org, user) == "reporter"


def test_addmember_without_password_new_user_unusable_existing_kept(org):
    out = run("addmember", "ACME", "viewer1", role="viewer")
    user = User.objects.get(username="viewer1")
    assert not user.has_usable_password()
    assert member_role(org, user) == "viewer"
    assert "no usable password" in out

    User.objects.create_user("carol", password="carols-own-password")
    out = run("addmember", "ACME", "carol", role="viewer")
    assert "Updated user carol" in out
    assert authenticate(username="carol", password="carols-own-password") is not None
    # A new role replaces the old one (one role per org).
    run("addmember", "ACME", "carol", role="admin")
    assert member_role(org, User.objects.get(username="carol")) == "admin"
    run("addmember", "ACME", "carol", role="reporter")
    assert member_role(org, User.objects.get(username="carol")) == "reporter"


def test_addmember_password_stdin_changes_existing_password(org):
    User.objects.create_user("dave", password="old-password-123")
    run("addmember", "ACME", "dave", role="viewer", password_stdin=True,
        stdin=io.StringIO("new-password-456\n"))
    assert authenticate(username="dave", password="new-password-456") is not None
    assert authenticate(username="dave", password="old-password-123") is None


@pytest.mark.parametrize("args, kwargs, message", [
    (("NOPE", "alice"), {"role": "admin"}, "Organization 'NOPE' does not exist."),
    (("ACME", "alice"), {"role": "owner"}, "Unknown role 'owner'; use one of admin, viewer, reporter."),
    (("ACME", "alice"), {"role": "admin", "password_stdin": True, "stdin": io.StringIO("")},
     "no password on stdin"),
    (("ACME", "alice"), {"role": "admin", "password_stdin": True, "stdin": io.StringIO("   \nx\n")},
     "no password on stdin"),
    (("ACME", "alice"), {"role": "admin", "password_stdin": True, "stdin": io.StringIO("short\n")},
     "too short"),
    (("ACME", "   "), {"role": "admin"}, "username must be 1-150 characters."),
    (("ACME", "bad name!"), {"role": "admin"}, "username"),
])
def test_addmember_bad_input_writes_nothing(org, args, kwargs, message):
    before = snapshot()
    with pytest.raises(CommandError, match=re.escape(message)):
        run("addmember", *args, **kwargs)
    assert snapshot() == before


def test_addmember_bad_role_keeps_existing_role(org):
    run("addmember", "ACME", "erin", role="viewer")
    with pytest.raises(CommandError, match="Unknown role"):
        run("addmember", "ACME", "erin", role="superadmin")
    assert member_role(org, User.objects.get(username="erin")) == "viewer"


# --- run_sweeps ------------------------------------------------------------------------------

def test_run_sweeps_expires_temporary_entitlements_and_heals():
    org = acme()
    subscribe(org, "RHEL-4G", 1)
    g3 = guest(org, "g3")
    (temporary,) = ents(g3)
    assert temporary.pool.type == Pool.Type.UNMAPPED_GUEST
    # Eight days later: the temporary entitlement has ended and the window has passed.
    past = timezone.now() - timedelta(minutes=1)
    Entitlement.objects.filter(pk=temporary.pk).update(end=past)
    System.objects.filter(pk=g3.pk).update(registered_at=timezone.now() - timedelta(days=8))

    out = run("run_sweeps")
    assert "expire_unmapped_entitlements: 1 expired temporary (unmapped guest) entitlement(s) revoked" in out
    assert "expire_subscriptions: 0 entitlement(s) of ended subscriptions revoked" in out
    assert "heal_all_orgs: resolution of 1 self-healing system(s) in this process" in out
    assert "requeue_reports: 0 waiting report(s) sent to be applied again" in out
    assert "record_coverage_snapshots: coverage snapshot of 1 organization(s) recorded" in out
    assert not Entitlement.objects.filter(pk=temporary.pk).exists()
    # Treated as a physical system now: one unit of RHEL-4G's normal pool.
    assert [e.pool.type for e in ents(g3)] == [Pool.Type.NORMAL]
    assert subs.compliance_for(reload(g3)).status == "valid"
    # Today's snapshot, taken after the sweeps (the last entry of the schedule).
    snapshot = CoverageSnapshot.objects.get(org=org, day=timezone.localdate())
    assert (snapshot.guests_covered, snapshot.guests_temporary) == (1, 0)


@celery_app.task(name="tests.test_commands.prune_something")
def prune_something() -> str:
    return "3 pruned"


def test_run_sweeps_runs_whatever_the_beat_schedule_holds(monkeypatch):
    """Every entry of beat_schedule, one another feature adds included, and waiting reports."""
    org = acme()
    report = reports.accept_checkin(org, b'{"hypervisors": []}', reporter_id="r1")
    Report.objects.filter(pk=report.pk).update(state=Report.State.CREATED,
                                               created=timezone.now() - timedelta(hours=1))
    schedule = dict(celery_app.conf.beat_schedule)
    schedule["prune-something"] = {"task": "tests.test_commands.prune_something", "schedule": 3600}
    monkeypatch.setitem(celery_app.conf, "beat_schedule", schedule)
    out = run("run_sweeps")
    assert "prune_something: done (3 pruned)" in out
    assert "requeue_reports: 1 waiting report(s) sent to be applied again" in out
    assert len(out.splitlines()) == len(schedule)


def test_run_sweeps_revokes_entitlements_of_ended_subscriptions():
    org = acme()
    subscription = subscribe(org, "RHEL-4G", 1)
    p1 = physical(org, "p1")
    assert len(ents(p1)) == 1
    start, end = timezone.now() - timedelta(days=30), timezone.now() - timedelta(minutes=1)
    Subscription.objects.filter(pk=subscription.pk).update(start=start, end=end)
    Pool.objects.filter(subscription=subscription).update(start=start, end=end)

    out = run("run_sweeps")
    assert "expire_subscriptions: 1 entitlement(s) of ended subscriptions revoked" in out
    assert ents(p1) == []
    assert subs.compliance_for(reload(p1)).status == "invalid"


def test_run_sweeps_reports_a_skipped_sweep():
    """A sweep whose lock another session holds (a beat run still going) is skipped, said so."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)",
                           [locks.SWEEP, locks.SWEEP_EXPIRE_SUBSCRIPTIONS])
        out = run("run_sweeps")
    finally:
        other.close()
    assert "expire_subscriptions: skipped, another run of this sweep is in progress" in out
    assert "expire_unmapped_entitlements: 0 expired" in out


# --- seed_demo -------------------------------------------------------------------------------

PASSWORD_RE = re.compile(r"^Admin password: (\S+)$", re.M)


def _seed(**kwargs) -> tuple[str, str]:
    out = run("seed_demo", **kwargs)
    (password,) = PASSWORD_RE.findall(out)
    return out, password


def _by_name(org: Organization) -> dict[str, System]:
    return {s.name.split(".")[0]: s for s in
            System.objects.filter(org=org).select_related("org", "current_host")}


def _explain(system: System) -> dict:
    (item,) = explain(reload(system))
    return item.as_dict()


def test_seed_demo_creates_the_demo_world():
    out, password = _seed()
    org = Organization.objects.get(key="ACME")
    assert "Demo data loaded into organization ACME." in out
    assert re.search(r"^Username: admin$", out, re.M)
    assert "/admin/" in out

    admin = authenticate(username="admin", password=password)
    assert admin is not None and admin.is_superuser and admin.is_staff
    assert member_role(org, admin) == "admin"

    systems = _by_name(org)
    hosts = {n for n, s in systems.items() if s.type == System.Type.HYPERVISOR}
    assert hosts == {"esx01", "esx02", "kvm01"}
    assert systems["esx01"].facts["hypervisor.type"] == "VMware ESXi"
    assert {"cpu.cpu_socket(s)", "hypervisor.cluster", "dmi.system.uuid"} <= set(systems["kvm01"].facts)
    assert [e.pool.subscription.product.sku for e in ents(systems["esx01"])] == ["VDC"]
    assert [e.pool.subscription.product.sku for e in ents(systems["esx02"])] == ["RHEL-4G"]
    assert ents(systems["kvm01"]) == []

    states = {n: subs.compliance_for(s).status for n, s in systems.items() if s.installed_products}
    assert states == {
        "web01": "valid", "web02": "valid", "app03": "valid",
        "dev01": "valid", "dev02": "valid", "dev03": "valid", "dev04": "valid", "dev05": "invalid",
        "test01": "invalid", "new-vm01": "partial", "old-vm01": "invalid", "bare01": "valid",
    }
    assert "8 valid, 1 partial, 3 invalid" in out

    # VDC host: guests inherit the derived pool (RHEL-G).
    web01 = _explain(systems["web01"])
    assert "esx01.acme.example" in web01["message"] and "VDC" in web01["message"]
    assert [e.pool.type for e in ents(systems["web01"])] == [Pool.Type.ENTITLEMENT_DERIVED]
    # RHEL-4G host: 4 guests, the fifth finds the derived pool exhausted.
    assert _explain(systems["dev01"])["message"] == (
        "covered through host esx02.acme.example's subscription RHEL-4G")
    dev05 = _explain(systems["dev05"])
    assert dev05["reason"] == "pool_exhausted"
    assert "pool exhausted (4 of 4 used)" in dev05["message"]
    # A host nothing is left for.
    test01 = _explain(systems["test01"])
    assert test01["reason"] in ("pool_exhausted", "host_not_entitled")
    assert "kvm01.acme.example" in test01["message"]
    # Not reported, registered now: temporary entitlement.
    new = _explain(systems["new-vm01"])
    assert new["reason"] == "UNMAPPEDGUEST" and "temporary entitlement ends in" in new["message"]
    assert [e.pool.type for e in ents(systems["new-vm01"])] == [Pool.Type.UNMAPPED_GUEST]
    # Not reported, registered 3 days ago: treated as physical, nothing left.
    old = _explain(systems["old-vm01"])
    assert old["reason"] == "pool_exhausted"
    assert old["message"].startswith("not covered as a physical system")
    # Dropped from its host's report: keeps its entitlement, host unknown.
    app03 = systems["app03"]
    assert app03.current_host_id is None and app03.host_unknown_since is not None
    assert "host unknown since" in _explain(app03)["message"]
    # 4-socket physical system: 2 units of the 2-socket RHEL-PHYS.
    (bare,) = ents(systems["bare01"])
    assert (bare.pool.product.sku, bare.quantity) == ("RHEL-PHYS", 2)


def test_seed_demo_twice_keeps_the_data_and_resets_the_password():
    _, first = _seed()
    counts = snapshot()
    states = {s.name: subs.compliance_for(s).status
              for s in System.objects.select_related("org", "current_host")}
    out, second = _seed()
    assert "already exists" in out
    assert snapshot() == counts
    assert {s.name: subs.compliance_for(s).status
            for s in System.objects.select_related("org", "current_host")} == states
    assert second != first
    assert authenticate(username="admin", password=second) is not None
    assert authenticate(username="admin", password=first) is None


def test_seed_demo_other_org_key_and_existing_admin():
    User.objects.create_user("admin", password="whatever-it-was")
    out, password = _seed(org="demo-2")
    org = Organization.objects.get(key="demo-2")
    assert System.objects.filter(org=org, name="esx01.demo-2.example").exists()
    admin = authenticate(username="admin", password=password)
    assert admin.is_superuser and admin.is_staff and member_role(org, admin) == "admin"


def test_seed_demo_bad_key_writes_nothing():
    before = snapshot()
    with pytest.raises(CommandError, match="is invalid"):
        run("seed_demo", org="not a key")
    assert snapshot() == before


def test_seed_demo_failure_at_the_end_leaves_nothing(monkeypatch):
    """Everything built (subscriptions, pools, entitlements, mappings), then a failure."""
    real_build = seed_module._build

    def failing_build(org, domain):
        real_build(org, domain)
        assert Entitlement.objects.filter(org=org).count() > 10
        raise ValidationError("late failure", code="invalid")

    monkeypatch.setattr(seed_module, "_build", failing_build)
    before = snapshot()
    with pytest.raises(CommandError, match="late failure"):
        run("seed_demo")
    assert snapshot() == before


def test_seed_demo_failure_midway_leaves_nothing(monkeypatch):
    def failing_build(org, domain):
        subs.create_product(org, "479", "RHEL")  # something written before the failure
        raise ValidationError("boom while loading", code="invalid")

    monkeypatch.setattr(seed_module, "_build", failing_build)
    before = snapshot()
    with pytest.raises(CommandError, match="Demo data could not be loaded: boom while loading"):
        run("seed_demo")
    assert snapshot() == before
