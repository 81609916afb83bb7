from django.apps import AppConfig


class SamConfig(AppConfig):
    name = "sam"
    verbose_name = "sam"

    def ready(self) -> None:
        # The tasks fill the services' task slots (sam/task_slots.py) in every process.
        import hypervisors.tasks  # noqa: F401
        import subscriptions.tasks  # noqa: F401
        from sam import checks  # noqa: F401  (registers the system checks)
