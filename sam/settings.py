"""Django settings for sam, read from the environment (see README "Configuration").

Nothing set: the embedded default (SQLite in ``SAM_DATA_DIR``, tasks run in-process).
``DATABASE_URL`` + ``REDIS_URL``: PostgreSQL and real Celery workers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

from csp import constants as csp
from kombu import Queue

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
    "csp",
    "django_filters",
    "guardian",
    "axes",
    "sam",
    "orgs",
    "subscriptions",
    "hypervisors",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "sam.middleware.HtmlGZipMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "sam.middleware.SecureCookiesOverTLSMiddleware",
    # Hostile input (NUL, surrogates, deep JSON, oversized bodies) refused before anything
    # else reads the request (its refusals still get the headers above): sam/middleware.py.
    "sam.middleware.InputGuardMiddleware",
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
    "orgs.auth.ThrottleBackend",  # first: a locked-out client is refused before any hashing
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

# --- Credential throttling (performance.md R8), django-axes with its database handler --------------
# After 10 failures within 5 minutes per (address, username) and per address, every further
# attempt is refused (429 with Retry-After, or the sign-in form's error) without hashing.
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = 10
AXES_COOLOFF_TIME = timedelta(minutes=5)
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"], "ip_address"]
AXES_CLIENT_IP_CALLABLE = "orgs.auth.client_address"
AXES_USERNAME_CALLABLE = "orgs.auth.throttle_username"
# A refused attempt is not counted again (no write per attempt while locked out).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False  # one known password must not reset an address's count
AXES_DISABLE_ACCESS_LOG = True
# Proxies whose X-Forwarded-For (and -Proto) are believed; `manage.py serve` passes them to gunicorn.
SAM_FORWARDED_ALLOW_IPS = env.forwarded_allow_ips()

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
STATIC_ROOT = env.env_str("SAM_STATIC_ROOT", str(DATA_DIR / "static"))
os.makedirs(STATIC_ROOT, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # After collectstatic: content-hashed names (cached for a year) and gzip/brotli copies.
    # Before it: the plain names, served from the apps (see sam/staticfiles.py).
    "staticfiles": {"BACKEND": "sam.staticfiles.HashedStaticFilesStorage"},
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
    "DEFAULT_PARSER_CLASSES": [
        "sam.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
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
                            "PoolTypeEnum": "subscriptions.models.Pool.Type",
                            "KindEnum": "hypervisors.models.Report.Kind",
                            "StateEnum": "hypervisors.models.Report.State",
                            "ManifestImportKindEnum": "subscriptions.models.ManifestImport.Kind",
                            "ManifestImportStateEnum": "subscriptions.models.ManifestImport.State",
                            "ManifestImportStatusEnum": "subscriptions.models.ManifestImport.Status",
                            "StatusEnum": ["valid", "partial", "invalid", "disabled"],
                            "ManifestConflictEnum": "subscriptions.manifest.importer.CONFLICT_KEYS"},
    "TITLE": "sam API",
    "DESCRIPTION": "Self-hosted subscription server with virtualization entitlement accounting.",
    "VERSION": "1",
}

# --- HTTPS, cookies and the Content-Security-Policy (README "Security headers") -----------------
# Cookies get the Secure flag per request, whenever the request came over TLS (``serve``, or a
# proxy in SAM_FORWARDED_ALLOW_IPS that says https): sam.middleware.SecureCookiesOverTLSMiddleware.
# The static SESSION/CSRF_COOKIE_SECURE settings would break the plain-HTTP development server,
# so their deploy checks are replaced by that middleware.
# axes.W002 asks for AxesMiddleware, which answers lockouts with its own page; sam answers them
# in each surface's own shape instead (orgs.auth.Throttled: Candlepin, API, sign-in form).
SILENCED_SYSTEM_CHECKS = ["security.W012", "security.W016", "axes.W002"]
# HSTS is sent on HTTPS responses only; on by default only with a real certificate: a browser
# that saw it refuses to let its user past a self-signed certificate's warning.
SECURE_HSTS_SECONDS = env.env_int(
    "SAM_HSTS_SECONDS", 365 * 86400 if env.env_str("SAM_TLS_CERT") else 0, minimum=0)
# The CSP of every page. Templates keep it by putting all CSS in static files (no style=
# attributes, no <style>) and all behaviour in static scripts (no inline <script>, no on*=
# handlers: sam/static/sam/sam.js hooks onto data-* attributes). The API viewers are the only
# pages with additions (sam/api/urls.py). tests/test_csp.py visits every page in Chromium.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF],
        "img-src": [csp.SELF],
        "font-src": [csp.SELF],
        "connect-src": [csp.SELF],
        "object-src": [csp.NONE],
        "base-uri": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
    },
}

# --- Background work -------------------------------------------------------------------------
REDIS_URL = env.redis_url()
# Verified credentials and the dashboards' numbers: shared by every process through Redis when
# there is one (an unreachable Redis counts as a miss, see sam/cache.py), else in-process.
CACHES = {"default": {
    "BACKEND": "sam.cache.TolerantRedisCache", "LOCATION": env.redis_cache_location(REDIS_URL),
    "KEY_PREFIX": "sam", "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
} if REDIS_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
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
# Every task has time limits: past the soft one it is told to stop (SoftTimeLimitExceeded, its
# transaction rolls back, the job row records the failure); past the hard one its process is
# killed. Both stay below the visibility timeout, so Redis never re-delivers a task still running.
CELERY_TASK_SOFT_TIME_LIMIT = env.env_int("SAM_TASK_SOFT_TIME_LIMIT", 1800, minimum=10)
CELERY_TASK_TIME_LIMIT = env.env_int("SAM_TASK_TIME_LIMIT", 2400, minimum=20)
if not CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < CELERY_VISIBILITY_TIMEOUT:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "Need SAM_TASK_SOFT_TIME_LIMIT < SAM_TASK_TIME_LIMIT < SAM_CELERY_VISIBILITY_TIMEOUT "
        f"(got {CELERY_TASK_SOFT_TIME_LIMIT}, {CELERY_TASK_TIME_LIMIT}, {CELERY_VISIBILITY_TIMEOUT}).")
CELERY_TASK_DEFAULT_QUEUE = env.env_str("SAM_CELERY_QUEUE", "sam")
# Applying reports and resolving systems have queues of their own (performance.md P12), so a
# backlog of resolutions never delays the next report's apply. A worker started without -Q
# consumes all three; production runs one worker for reports (and the rest) and one for
# resolution (README, docker-compose.yml).
SAM_REPORT_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}.reports"
SAM_RESOLUTION_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}.resolution"
SAM_QUEUES = (CELERY_TASK_DEFAULT_QUEUE, SAM_REPORT_QUEUE, SAM_RESOLUTION_QUEUE)
CELERY_TASK_QUEUES = [Queue(name, routing_key=name) for name in SAM_QUEUES]
CELERY_TASK_ROUTES = {
    "hypervisors.tasks.apply_report_task": {"queue": SAM_REPORT_QUEUE,
                                            "routing_key": SAM_REPORT_QUEUE},
    "hypervisors.tasks.write_timeline_task": {"queue": SAM_REPORT_QUEUE,
                                              "routing_key": SAM_REPORT_QUEUE},
    "subscriptions.tasks.resolve_systems": {"queue": SAM_RESOLUTION_QUEUE,
                                            "routing_key": SAM_RESOLUTION_QUEUE},
}
# No broker, so no `celery beat` either: the serving process runs the beat schedule (sam/beat.py).
SAM_BEAT_IN_PROCESS = env.env_bool("SAM_BEAT_IN_PROCESS", REDIS_URL is None)

# --- Domain defaults -----------------------------------------------------------------------------
SAM_UNMAPPED_WINDOW_DEFAULT = timedelta(hours=24)
SAM_UNMAPPED_LIFETIME_DEFAULT = timedelta(days=7)
# How many systems one resolution task handles; bigger batches mean fewer broker messages.
SAM_RESOLVE_BATCH = env.env_int("SAM_RESOLVE_BATCH", 250, minimum=1, maximum=5000)
# "batch": guests are resolved set-based, a batch in a fixed number of statements, and only what
# that cannot decide per system; "per_system": every system on its own (subscriptions/batch.py).
SAM_RESOLUTION = env.env_choice("SAM_RESOLUTION", "batch", ("batch", "per_system"))
# Small resolution enqueues (a registration) wait this long in Redis and are resolved together,
# set-based (subscriptions/pending.py); 0: a task each.
SAM_RESOLUTION_COALESCE_MS = env.env_int("SAM_RESOLUTION_COALESCE_MS", 250, minimum=0, maximum=10_000)
SAM_HOSTNAME = env.env_str("SAM_HOSTNAME") or socket.getfqdn()
# The header in which a TLS-terminating proxy (one of SAM_FORWARDED_ALLOW_IPS) passes the
# client certificate it verified (URL-escaped PEM): sam/clientcert.py.
SAM_CLIENT_CERT_HEADER = env.env_str("SAM_CLIENT_CERT_HEADER", "X-SSL-Client-Cert")

# --- virt-who check-in -----------------------------------------------------------------------
# Largest accepted report body (413 above it). The 17,000-hypervisor report is about 20 MB.
SAM_REPORT_MAX_BYTES = env.env_int("SAM_REPORT_MAX_BYTES", 64 * 1024 * 1024, minimum=1024)
# Waiting reports of one org, and of one reporter of an org, before new ones (and legacy
# synchronous check-ins) get 429 with Retry-After: per org, never global (performance.md R9).
SAM_REPORT_ORG_QUEUE_LIMIT = env.env_int("SAM_REPORT_ORG_QUEUE_LIMIT", 500, minimum=1,
                                         maximum=1_000_000)
SAM_REPORT_REPORTER_QUEUE_LIMIT = env.env_int("SAM_REPORT_REPORTER_QUEUE_LIMIT", 20, minimum=1,
                                              maximum=1_000_000)
SAM_REPORT_RETRY_AFTER = env.env_int("SAM_REPORT_RETRY_AFTER", 60, minimum=1)
# Reports still CREATED after this many seconds are sent to the workers again.
SAM_REPORT_REQUEUE_AFTER = env.env_int("SAM_REPORT_REQUEUE_AFTER", 120, minimum=1)
# A report that moves, adds or removes at least this many guests writes their host timeline
# after its own transaction (the job is FINISHED sooner; the timeline follows within a second).
SAM_TIMELINE_DEFER_GUESTS = env.env_int("SAM_TIMELINE_DEFER_GUESTS", 500, minimum=0)
# How often beat runs that sweep (seconds).
SAM_REPORT_REQUEUE_INTERVAL = env.env_int("SAM_REPORT_REQUEUE_INTERVAL", 60, minimum=1)
# Retention (performance.md R10): stored report bodies are dropped this many days after their
# job ended (hash, result and diff stay); reports, entitlement events, closed host timeline
# entries and coverage snapshots older than SAM_HISTORY_DAYS are deleted. Never below the 90
# days the dashboard charts.
SAM_REPORT_PAYLOAD_DAYS = env.env_int("SAM_REPORT_PAYLOAD_DAYS", 14, minimum=0, maximum=100_000)
SAM_HISTORY_DAYS = env.env_int("SAM_HISTORY_DAYS", 400, minimum=90, maximum=100_000)
# Every other request body keeps Django's limits (DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB): the
# check-in and import views read their bodies themselves up to their own limits (sam/inputs.py).
# Publishing a task fails fast when the broker is down (the job row is the durable copy).
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.5}

# --- Red Hat manifests ------------------------------------------------------------------------
# Largest accepted manifest upload (the largest real one is 1.2 MB); read as an upload, not a form.
SAM_MANIFEST_MAX_BYTES = env.env_int("SAM_MANIFEST_MAX_BYTES", 32 * 1024 * 1024, minimum=64 * 1024,
                                     maximum=1024 * 1024 * 1024)
# Upstream certificates trusted to sign manifests (PEM files; manage.py trust_manifest_cert).
SAM_MANIFEST_TRUST_DIR = env.env_str("SAM_MANIFEST_TRUST_DIR", str(DATA_DIR / "pki" / "upstream"))

# --- Metrics (GET /metrics, Prometheus; README "Metrics") --------------------------------------
# Off (404) until a bearer token (at least 24 characters) or an address list is set; with both,
# a scrape needs both. The list holds addresses or networks (10.0.0.0/8) of the peer.
SAM_METRICS_TOKEN = env.env_secret("SAM_METRICS_TOKEN")
if SAM_METRICS_TOKEN is not None and len(SAM_METRICS_TOKEN) < 24:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("SAM_METRICS_TOKEN must be at least 24 characters (e.g. the output "
                               "of `openssl rand -hex 24`).")


def _networks(items: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"SAM_METRICS_ALLOW_IPS: {exc} (give comma-separated "
                                   "addresses or networks).") from None


SAM_METRICS_ALLOW_IPS = _networks(env.env_list("SAM_METRICS_ALLOW_IPS", []))
# Counters of every process (gunicorn and Celery workers) live in small files here, one
# directory per host, summed at each scrape (prometheus-client's multiprocess mode).
SAM_METRICS_DIR = env.env_str("SAM_METRICS_DIR") or str(DATA_DIR / "metrics")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(SAM_METRICS_DIR, socket.gethostname())

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
