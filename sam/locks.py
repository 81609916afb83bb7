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
# 4 was ORG_HEAL, never taken by any code: retired, not to be reused.

SWEEP_EXPIRE_UNMAPPED = 1
SWEEP_EXPIRE_SUBSCRIPTIONS = 2
SWEEP_HEAL_ALL = 3
SWEEP_REQUEUE_REPORTS = 4
SWEEP_COVERAGE_SNAPSHOTS = 5
SWEEP_PRUNE_HISTORY = 6
SWEEP_RESOLVE_PENDING = 7  # one run of tasks.resolve_pending at a time


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def xact_lock(namespace: int, key: int) -> None:
    """Wait for the lock until the current transaction ends. Call inside ``atomic()``."""
    if _is_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, _int4(key)])


def try_xact_lock(namespace: int, key: int) -> bool:
    """Take the lock until the current transaction ends if it is free; never wait."""
    if not _is_postgres():
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [namespace, _int4(key)])
        return bool(cursor.fetchone()[0])


def xact_lock_many(namespace: int, keys: Iterable[int]) -> None:
    """Take several locks in ascending order, so two callers can never deadlock each other."""
    for key in sorted(set(keys)):
        xact_lock(namespace, key)


def xact_lock_all(namespace: int, keys: Iterable[int]) -> None:
    """``xact_lock_many`` in one statement, whatever the number of keys (set-based resolution):
    the locks are taken one after the other in ascending key order, like ``xact_lock_many``."""
    ordered = [_int4(k) for k in sorted(set(keys))]
    if not ordered or not _is_postgres():
        return
    with connection.cursor() as cursor:
        # WITH ORDINALITY + ORDER BY: the function runs per row in the array's (sorted) order.
        cursor.execute("SELECT pg_advisory_xact_lock(%s, t.key) FROM unnest(%s::int[]) "
                       "WITH ORDINALITY AS t(key, n) ORDER BY t.n", [namespace, ordered])
        cursor.fetchall()


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
