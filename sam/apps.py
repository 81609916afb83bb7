from django.apps import AppConfig


class SamConfig(AppConfig):
    name = "sam"
    verbose_name = "sam"

    def ready(self) -> None:
        from sam import checks  # noqa: F401  (registers the system checks)
