"""Django settings for sam, read from the environment (see README "Configuration").

Nothing set: the embedded default (SQLite in ``SAM_DATA_DIR``, tasks run in-process).
``DATABASE_URL`` + ``REDIS_URL``: PostgreSQL and real Celery workers.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from sam import env

DATA_DIR = env.data_dir()
SECRET_KEY = env.secret_key(DATA_DIR)
DEBUG = env.env_bool("SAM_DEBUG", False)
ALLOWED_HOSTS = env.env_list("SAM_ALLOWED_HOSTS", ["*"])
CSRF_TRUSTED_ORIGINS = env.env_list("SAM_CSRF_TRUSTED_ORIGINS", [])
TIME_ZONE = env.env_str("SAM_TIME_ZONE", "UTC")
USE_TZ = True
USE_I18N = True
LANGUAGE_CODE = "en-us"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "guardian",
    "sam",
    "orgs",
    "subscriptions",
    "hypervisors",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sam.urls"
WSGI_APPLICATION = "sam.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.database_config(DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# guardian: org roles live in direct foreign-key tables (orgs.models); no anonymous user rows.
ANONYMOUS_USER_NAME = None
GUARDIAN_MONKEY_PATCH_USER = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
STATIC_ROOT = env.env_str("SAM_STATIC_ROOT", str(DATA_DIR / "static"))
os.makedirs(STATIC_ROOT, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps when collectstatic has not run (embedded mode, tests).
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sam.api.authentication.TokenAuthentication",
        "sam.api.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "sam.api.pagination.LimitOffset",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "EXCEPTION_HANDLER": "sam.api.errors.handle",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    # Swagger UI and ReDoc from the installed sidecar package: no CDN (air-gapped installs).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"SystemTypeEnum": "orgs.models.System.Type",
                            "PoolTypeEnum": "subscriptions.models.Pool.Type"},
    "TITLE": "sam API",
    "DESCRIPTION": "Self-hosted subscription server with virtualization entitlement accounting.",
    "VERSION": "1",
}

# --- Background work -------------------------------------------------------------------------
REDIS_URL = env.redis_url()
# Embedded mode: no broker, tasks run in the calling process right after commit.
CELERY_TASK_ALWAYS_EAGER = env.env_bool("SAM_TASKS_EAGER", REDIS_URL is None)
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis re-delivers an unacknowledged task after this many seconds: longer than the longest job.
CELERY_VISIBILITY_TIMEOUT = env.env_int("SAM_CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_DEFAULT_QUEUE = env.env_str("SAM_CELERY_QUEUE", "sam")

# --- Domain defaults -----------------------------------------------------------------------------
SAM_UNMAPPED_WINDOW_DEFAULT = timedelta(hours=24)
SAM_UNMAPPED_LIFETIME_DEFAULT = timedelta(days=7)
# How many systems one resolution task handles; bigger batches mean fewer broker messages.
SAM_RESOLVE_BATCH = env.env_int("SAM_RESOLVE_BATCH", 25, minimum=1, maximum=10000)
SAM_HOSTNAME = env.env_str("SAM_HOSTNAME", socket.getfqdn())

# --- virt-who check-in -----------------------------------------------------------------------
# Largest accepted report body (413 above it). The 17,000-hypervisor report is about 20 MB.
SAM_REPORT_MAX_BYTES = env.env_int("SAM_REPORT_MAX_BYTES", 64 * 1024 * 1024, minimum=1024)
# Waiting reports (all orgs) before new ones get 429 with Retry-After.
SAM_REPORT_QUEUE_LIMIT = env.env_int("SAM_REPORT_QUEUE_LIMIT", 500, minimum=1)
SAM_REPORT_RETRY_AFTER = env.env_int("SAM_REPORT_RETRY_AFTER", 60, minimum=1)
# Reports still CREATED after this many seconds are sent to the workers again.
SAM_REPORT_REQUEUE_AFTER = env.env_int("SAM_REPORT_REQUEUE_AFTER", 120, minimum=1)
# How often beat runs that sweep (seconds).
SAM_REPORT_REQUEUE_INTERVAL = env.env_int("SAM_REPORT_REQUEUE_INTERVAL", 60, minimum=1)
# Request bodies up to the report limit are read into memory (Django's own guard).
DATA_UPLOAD_MAX_MEMORY_SIZE = SAM_REPORT_MAX_BYTES
# Publishing a task fails fast when the broker is down (the job row is the durable copy).
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.5}

LOG_LEVEL = (env.env_str("SAM_LOG_LEVEL", "INFO") or "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"SAM_LOG_LEVEL={LOG_LEVEL!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL."
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
