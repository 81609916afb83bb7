"""Registry of advisory-lock keys, so two features never pick the same number.

PostgreSQL: transaction-scoped ``pg_advisory_xact_lock(namespace, id)``, released at commit or
rollback. SQLite (embedded mode) serialises writers with IMMEDIATE transactions, so the lock is
a no-op there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.db import connection

# Namespaces (first argument of the two-int form). Never renumber: running workers of an older
# release must agree on them during an upgrade.
ORG_REPORT = 1  # one report applied per org at a time (hypervisors ingest)
SYSTEM = 2  # entitlements of one system change under this lock (host auto-attach, resolution)
SWEEP = 3  # periodic sweeps must not overlap: id = the sweep's number below
ORG_HEAL = 4

SWEEP_EXPIRE_UNMAPPED = 1
SWEEP_EXPIRE_SUBSCRIPTIONS = 2
SWEEP_HEAL_ALL = 3
SWEEP_REQUEUE_REPORTS = 4
SWEEP_COVERAGE_SNAPSHOTS = 5


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def xact_lock(namespace: int, key: int) -> None:
    """Wait for the lock until the current transaction ends. Call inside ``atomic()``."""
    if _is_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, _int4(key)])


def xact_lock_many(namespace: int, keys: Iterable[int]) -> None:
    """Take several locks in ascending order, so two callers can never deadlock each other."""
    for key in sorted(set(keys)):
        xact_lock(namespace, key)


def _int4(key: int) -> int:
    # The two-int form takes int4; wrap bigint ids into that range deterministically.
    key = int(key) & 0xFFFFFFFF
    return key - (1 << 32) if key >= (1 << 31) else key


@contextmanager
def try_session_lock(namespace: int, key: int) -> Iterator[bool]:
    """Hold a session-level lock around work that commits in several transactions.

    Yields ``False`` when another session holds it. Used by periodic sweeps so two beats (or a
    slow run and the next one) never overlap.
    """
    if not _is_postgres():
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [namespace, _int4(key)])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [namespace, _int4(key)])
