"""``manage.py run_sweeps``: run the periodic sweeps (what beat schedules) once, in-process."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from sam.celery import app as celery_app
from subscriptions.tasks import expire_subscriptions, expire_unmapped_entitlements, heal_all_orgs


class Command(BaseCommand):
    help = ("Run the periodic sweeps once: expire temporary (unmapped guest) entitlements, "
            "revoke entitlements of ended subscriptions, re-resolve every self-healing system.")

    def handle(self, *args, **options):
        where = ("in this process" if celery_app.conf.task_always_eager
                 else "queued for the workers")
        sweeps = (
            ("expire_unmapped_entitlements", expire_unmapped_entitlements,
             "{n} expired temporary (unmapped guest) entitlement(s) revoked"),
            ("expire_subscriptions", expire_subscriptions,
             "{n} entitlement(s) of ended subscriptions revoked"),
            ("heal_all_orgs", heal_all_orgs,
             "resolution of {n} self-healing system(s) " + where),
        )
        for name, task, done in sweeps:
            count = task()
            if count is None:
                self.stdout.write(f"{name}: skipped, another run of this sweep is in progress")
            else:
                self.stdout.write(f"{name}: {done.format(n=count)}")
