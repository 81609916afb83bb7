"""Coalesced resolution: small enqueues (a registration, a fact update, a host's follow-up)
wait a moment in Redis and are resolved together, set-based and grouped by host
(performance.md P10, a burst of registrations).

A burst of 1,000 registrations would otherwise be 1,000 tasks of one system each, every one a
transaction of its own and all guests of a host queued on its lock. Here each enqueue adds its
ids to one Redis hash (system id → trigger and a token) after commit, and the first one of a
window schedules ``tasks.resolve_pending`` ``SAM_RESOLUTION_COALESCE_MS`` later; that task
resolves whatever is waiting, again until nothing is.

Nothing accepted is lost when a worker dies: an id leaves the hash only after it was resolved,
and only if it was not added again meanwhile (its token unchanged); what stays is taken by the
redelivered task (``acks_late``) or by the next enqueue's. Without a broker (the embedded mode,
eager tasks) or with the window set to 0, enqueues resolve as before.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from django.conf import settings

from sam.task_slots import TaskSlot

log = logging.getLogger(__name__)

# Delete a taken entry only if it still holds the value read (not added again meanwhile).
_DONE = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""


def enabled() -> bool:
    return (bool(settings.REDIS_URL) and not settings.CELERY_TASK_ALWAYS_EAGER
            and settings.SAM_RESOLUTION_COALESCE_MS > 0)


resolve_pending_task = TaskSlot("subscriptions.tasks.resolve_pending")  # tasks.py fills it


def _key() -> str:
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}:pending-resolution"


@lru_cache(maxsize=4)
def _client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


def client():
    return _client(settings.REDIS_URL)


def add(system_ids: list[int], trigger: str) -> bool:
    """Queue these ids (after commit); False when Redis refused (the caller sends a task)."""
    from redis.exceptions import RedisError

    token = uuid.uuid4().hex[:12]
    window = settings.SAM_RESOLUTION_COALESCE_MS
    try:
        redis = client()
        redis.hset(_key(), mapping={str(i): f"{token}:{trigger}" for i in system_ids})
        armed = redis.set(_key() + ":armed", token, nx=True, px=window)
    except RedisError as exc:
        log.warning("coalesced resolution unavailable, one task instead: %s", exc)
        return False
    if armed:
        resolve_pending_task.apply_async(countdown=window / 1000, queue=settings.SAM_RESOLUTION_QUEUE)
    return True


def take(limit: int = 20_000) -> dict[int, str]:
    """Up to ``limit`` waiting ids with the value each was read with (left in place)."""
    taken: dict[int, str] = {}
    for field, value in client().hscan_iter(_key(), count=1000):
        taken[int(field)] = value.decode() if isinstance(value, bytes) else value
        if len(taken) >= limit:
            break
    return taken


def trigger_of(value: str) -> str:
    return value.split(":", 1)[1] if ":" in value else "heal"


def done(entries: dict[int, str]) -> int:
    """Remove resolved entries (those not added again since they were taken)."""
    if not entries:
        return 0
    args = [v for system_id, value in entries.items() for v in (str(system_id), value)]
    return int(client().eval(_DONE, 1, _key(), *args))


def waiting() -> int:
    return int(client().hlen(_key()))
