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


app.conf.beat_schedule = {
    "expire-unmapped-entitlements": {
        "task": "subscriptions.tasks.expire_unmapped_entitlements",
        "schedule": crontab(minute="*/15"),
    },
    "expire-subscriptions": {
        "task": "subscriptions.tasks.expire_subscriptions",
        "schedule": crontab(minute="5"),
    },
    "requeue-waiting-reports": {
        "task": "hypervisors.tasks.requeue_reports",
        "schedule": _requeue_interval(),
    },
    "heal-all-orgs": {
        "task": "subscriptions.tasks.heal_all_orgs",
        "schedule": crontab(hour="2", minute="30"),
    },
    "record-coverage-snapshots": {
        "task": "subscriptions.tasks.record_coverage_snapshots",
        "schedule": crontab(hour="23", minute="50"),
    },
}
