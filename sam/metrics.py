"""Prometheus metrics at ``GET /metrics`` (README "Metrics").

Counters and the apply-duration histogram are counted where things happen — the web
processes (reports accepted, registrations) and the Celery worker processes (reports applied
or failed, resolution) — with prometheus-client in its multiprocess mode: every process keeps
its values in a small memory-mapped file under ``SAM_METRICS_DIR/<host>/`` and a scrape sums
the files of every process. Gauges are read at scrape time from where the truth is: reports
waiting per org from the database (``hypervisors.reports``: the open-report index, bounded by
the per-org waiting limits),
queue lengths from Redis (``LLEN``); apps register their own (``gauge_at_scrape``). No
scrape reads a big table.

Off by default (404): ``SAM_METRICS_TOKEN`` (``Authorization: Bearer``, 401 otherwise) and/or
``SAM_METRICS_ALLOW_IPS`` (the peer address, 403 otherwise) turn it on; with both, both must
match.
"""

from __future__ import annotations

import glob
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse

log = logging.getLogger(__name__)

# settings.py points PROMETHEUS_MULTIPROC_DIR at this host's directory; prometheus_client reads
# it when it is first imported, and opens its files there when a metric is first created.
PROCESS_DIR = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(settings.SAM_METRICS_DIR))
PROCESS_DIR.mkdir(parents=True, exist_ok=True)

from prometheus_client import (  # noqa: E402 - after the directory exists
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

REPORTS_ACCEPTED = Counter("sam_reports_accepted", "Check-in reports stored for a worker to apply")
REPORTS_IDENTICAL = Counter("sam_reports_identical", "Check-ins answered at once: identical to "
                            "the reporter's last applied report")
REPORTS_APPLIED = Counter("sam_reports_applied", "Reports applied by a worker")
REPORTS_SUPERSEDED = Counter("sam_reports_superseded", "Reports finished unapplied because a "
                             "newer report of the same reporter was waiting or applied")
REPORTS_FAILED = Counter("sam_reports_failed", "Reports that ended FAILED (an internal error)")
APPLY_SECONDS = Histogram("sam_report_apply_seconds", "Time to apply one report (claim to commit)",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160))
RESOLUTION_BATCHES = Counter("sam_resolution_batches", "Resolution tasks run (a batch of systems)")
SYSTEMS_RESOLVED = Counter("sam_systems_resolved", "Systems whose entitlements were resolved")
REGISTRATIONS = Counter("sam_registrations", "Systems registered through the consumer API",
                        ["via"])


# --- Counting (called where it happens; plain counters are incremented there directly) ---------

def report_applied(seconds: float) -> None:
    REPORTS_APPLIED.inc()
    APPLY_SECONDS.observe(seconds)


def resolution_batch(systems: int) -> None:
    """One resolution task finished, having resolved ``systems`` systems."""
    RESOLUTION_BATCHES.inc()
    SYSTEMS_RESOLVED.inc(max(0, systems))


def registered(via: str) -> None:
    REGISTRATIONS.labels(via=via or "unknown").inc()


# --- Process bookkeeping (manage.py serve, Celery workers) -------------------------------------

def forget_dead_processes() -> int:
    """At the start of a server or worker: drop this host's files of processes that are gone,
    so counters start again with the service (Prometheus reads a drop as a counter reset).
    Files of running processes (the other service on this host) stay."""
    removed = 0
    for path in PROCESS_DIR.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def process_exited(pid: int) -> None:
    """A web or worker child process ended (gunicorn ``child_exit``, Celery
    ``worker_process_shutdown``): prometheus-client's bookkeeping for live gauges."""
    mark_process_dead(pid, str(PROCESS_DIR))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connect_celery_signals() -> None:
    from celery import signals

    def on_ready(**kwargs: object) -> None:
        forget_dead_processes()

    def on_child_shutdown(**kwargs: object) -> None:
        process_exited(os.getpid())

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_process_shutdown.connect(on_child_shutdown, weak=False)


_connect_celery_signals()


# --- Scrape -------------------------------------------------------------------------------------

class _AllHosts:
    """The files of every host's directory (web and workers may run on different hosts that
    share ``SAM_DATA_DIR``), summed as prometheus-client's own multiprocess collector does."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(os.path.join(self.base, "*", "*.db"))
        return iter(MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True))


_GAUGES: list[Callable[[], Iterable[Metric]]] = []


def gauge_at_scrape(read: Callable[[], Iterable[Metric]]) -> Callable[[], Iterable[Metric]]:
    """Register a function that reads gauges at each scrape (an app's own numbers, read from
    its tables by its own query); usable as a decorator."""
    _GAUGES.append(read)
    return read


class _Live:
    """Gauges read at scrape time: the apps' registered ones, Celery queue lengths."""

    def collect(self) -> Iterator[Metric]:
        for read in _GAUGES:
            yield from read()
        lengths = queue_lengths()
        if lengths is not None:
            queue = GaugeMetricFamily("sam_queue_length", "Tasks waiting in a Celery queue "
                                      "(Redis LLEN)", labels=["queue"])
            for name, length in lengths.items():
                queue.add_metric([name], length)
            yield queue


def queue_lengths() -> dict[str, int] | None:
    """Waiting messages per queue sam uses; None without a broker (the embedded mode). kombu
    keeps a queue as one Redis list per priority step: ``name`` and ``name\\x06\\x16<step>``."""
    if not settings.REDIS_URL:
        return None
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    queues = [str(queue) for queue in settings.SAM_QUEUES]
    keys = [(queue, queue + suffix) for queue in queues
            for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169")]
    try:
        with client.pipeline(transaction=False) as pipe:
            for _, key in keys:
                pipe.llen(key)
            counts = pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: queue lengths unavailable: %s", exc)
        return None
    finally:
        client.close()
    lengths = dict.fromkeys(queues, 0)
    for (queue, _), count in zip(keys, counts, strict=True):
        lengths[queue] += int(count)
    return lengths


def exposition() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AllHosts(Path(str(settings.SAM_METRICS_DIR))))
    registry.register(_Live())
    return generate_latest(registry)


def _address_allowed(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.SAM_METRICS_ALLOW_IPS)


def _token_matches(request: HttpRequest) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    expected = settings.SAM_METRICS_TOKEN or ""
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              expected.encode())


def view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: 404 unless configured, 403 from an address not listed, 401 without the
    token."""
    if not settings.SAM_METRICS_TOKEN and not settings.SAM_METRICS_ALLOW_IPS:
        raise Http404("Metrics are not enabled.")
    if settings.SAM_METRICS_ALLOW_IPS and not _address_allowed(request):
        return HttpResponse("Forbidden: this address may not read the metrics.\n", status=403,
                            content_type="text/plain")
    if settings.SAM_METRICS_TOKEN and not _token_matches(request):
        response = HttpResponse("Unauthorized: a bearer token is required.\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="sam metrics"'
        return response
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return response
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
