"""A place for a Celery task that the module enqueuing it may not import.

Tasks are thin wrappers on top of the services (architecture.md), so a service that enqueues
work after commit cannot import its app's ``tasks`` module without an import cycle. The service
declares a ``TaskSlot``; the tasks module registers the task into it when imported, and
``sam.apps`` imports every app's tasks at startup, so the slot is filled before any request,
command or worker runs.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class TaskSlot:
    """Stands for one Celery task: ``delay`` sends to whatever task was registered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: Any = None

    def register(self, task: Any) -> Any:
        """Decorator for the task (above ``@shared_task``): fills the slot, returns the task."""
        self.task = task
        return task

    def _task(self) -> Any:
        if self.task is None:
            raise RuntimeError(f"task {self.name} is not registered (sam.apps imports the tasks)")
        return self.task

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self._task().delay(*args, **kwargs)

    def apply_async(self, *args: Any, **kwargs: Any) -> Any:
        return self._task().apply_async(*args, **kwargs)

    def delay_or_leave(self, *args: Any, waiting: str) -> None:
        """Send the task; when the broker is down, log and leave the work where it is stored
        (``waiting`` says where), for the sweep to send again. In-process (eager) a failure
        is the task's own error, and raised."""
        from django.conf import settings

        try:
            self._task().delay(*args)
        except Exception as exc:  # noqa: BLE001 - any broker failure; the database row remains
            if settings.CELERY_TASK_ALWAYS_EAGER:
                raise
            log.warning("%s, broker unavailable: %s", waiting, exc)
