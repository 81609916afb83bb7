"""A place for a Celery task that the module enqueuing it may not import.

Tasks are thin wrappers on top of the services (architecture.md), so a service that enqueues
work after commit cannot import its app's ``tasks`` module without an import cycle. The service
declares a ``TaskSlot``; the tasks module registers the task into it when imported, and
``sam.apps`` imports every app's tasks at startup, so the slot is filled before any request,
command or worker runs.
"""

from __future__ import annotations

from typing import Any


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
