"""Configuration mistakes as Django system checks (``manage.py check`` and every start)."""

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_deployment_mode(app_configs, **kwargs):
    problems = []
    engine = settings.DATABASES["default"]["ENGINE"]
    if settings.REDIS_URL and not settings.CELERY_TASK_ALWAYS_EAGER and "sqlite" in engine:
        problems.append(
            Error(
                "REDIS_URL is set but DATABASE_URL is not PostgreSQL.",
                hint="Celery workers run in other processes and need the shared PostgreSQL "
                "database: set DATABASE_URL=postgres://..., or unset REDIS_URL for the "
                "embedded mode.",
                id="sam.E001",
            )
        )
    if not settings.CELERY_TASK_ALWAYS_EAGER and not settings.REDIS_URL:
        problems.append(
            Error(
                "SAM_TASKS_EAGER is off but REDIS_URL is not set: background tasks would be lost.",
                hint="Set REDIS_URL=redis://host:6379/0, or leave SAM_TASKS_EAGER unset.",
                id="sam.E002",
            )
        )
    if not settings.DEBUG and settings.ALLOWED_HOSTS == ["*"] and settings.REDIS_URL:
        problems.append(
            Warning(
                "SAM_ALLOWED_HOSTS is '*' in a production setup.",
                hint="Set SAM_ALLOWED_HOSTS to the names clients use to reach sam.",
                id="sam.W001",
            )
        )
    return problems
