"""``manage.py run_sweeps``: run every periodic task of the beat schedule once, in-process."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from sam.beat import periodic_entries, run_task
from sam.celery import app as celery_app

# What each known task's result counts; any other entry of beat_schedule is run all the same.
DONE = {
    "subscriptions.tasks.expire_unmapped_entitlements":
        "{n} expired temporary (unmapped guest) entitlement(s) revoked",
    "subscriptions.tasks.expire_subscriptions": "{n} entitlement(s) of ended subscriptions revoked",
    "subscriptions.tasks.heal_all_orgs": "resolution of {n} self-healing system(s) {where}",
    "hypervisors.tasks.requeue_reports": "{n} waiting report(s) sent to be applied again",
    "subscriptions.tasks.record_coverage_snapshots": "coverage snapshot of {n} organization(s) recorded",
    "hypervisors.tasks.prune_history": "removed {n}",
}


class Command(BaseCommand):
    help = ("Run every periodic task of the beat schedule once (what `celery beat` or, in the "
            "embedded default, the serving process runs on its schedule): expire temporary "
            "(unmapped guest) entitlements, revoke entitlements of ended subscriptions, send "
            "waiting reports again, re-resolve every self-healing system, record today's "
            "coverage snapshots, and whatever else the schedule holds.")

    def handle(self, *args, **options):
        where = ("in this process" if celery_app.conf.task_always_eager
                 else "queued for the workers")
        for entry in periodic_entries(celery_app):
            name = entry.task.rsplit(".", 1)[-1]
            count = run_task(celery_app, entry)
            if isinstance(count, dict):
                count = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in count.items())
            if count is None:
                self.stdout.write(f"{name}: skipped, another run of this sweep is in progress")
            elif entry.task in DONE:
                self.stdout.write(f"{name}: {DONE[entry.task].format(n=count, where=where)}")
            else:
                self.stdout.write(f"{name}: done ({count})")
