"""The Celery app. Workers: ``celery -A sam worker``; periodic sweeps: ``celery -A sam beat``."""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sam.settings")

app = Celery("sam")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

def _requeue_interval() -> float:
    from django.conf import settings

    return float(settings.SAM_REPORT_REQUEUE_INTERVAL)


def _entry(task: str, schedule, period: float) -> dict:
    """A beat entry whose message expires after one period: a sweep still waiting when the next
    one is due (workers down, a backlog) is dropped, not run twice in a row."""
    return {"task": task, "schedule": schedule, "options": {"expires": period}}


HOUR, DAY = 3600.0, 86400.0
app.conf.beat_schedule = {
    "expire-unmapped-entitlements": _entry("subscriptions.tasks.expire_unmapped_entitlements",
                                           crontab(minute="*/15"), 15 * 60.0),
    "expire-subscriptions": _entry("subscriptions.tasks.expire_subscriptions",
                                   crontab(minute="5"), HOUR),
    "requeue-waiting-reports": _entry("hypervisors.tasks.requeue_reports",
                                      _requeue_interval(), _requeue_interval()),
    "heal-all-orgs": _entry("subscriptions.tasks.heal_all_orgs",
                            crontab(hour="2", minute="30"), DAY),
    "prune-history": _entry("hypervisors.tasks.prune_history",
                            crontab(hour="3", minute="40"), DAY),
    "record-coverage-snapshots": _entry("subscriptions.tasks.record_coverage_snapshots",
                                        crontab(hour="23", minute="50"), DAY),
}
