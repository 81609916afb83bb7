"""``manage.py createorg KEY --name NAME``: create an organization."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from orgs.models import Organization
from orgs.services import create_org
from sam.management.commands._util import command_error


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600:
        return f"{seconds // 60} min"
    hours = seconds // 3600
    return f"{hours // 24} d" if hours >= 48 and hours % 24 == 0 else f"{hours} h"


class Command(BaseCommand):
    help = "Create an organization (its KEY is its permanent address, e.g. ACME)."

    def add_arguments(self, parser):
        parser.add_argument("key", help="organization key: letters, digits, '-' and '_'")
        parser.add_argument("--name", required=True, help="display name")
        parser.add_argument("--unmapped-window-hours", type=int, metavar="HOURS",
                            help="how long after registration a guest with no known host may take "
                                 "a temporary entitlement (default 24)")
        parser.add_argument("--unmapped-lifetime-days", type=int, metavar="DAYS",
                            help="a temporary entitlement ends this long after the guest "
                                 "registered (default 7)")
        parser.add_argument("--simple-content-access", action="store_true",
                            help="report 'disabled' compliance to clients (accounting still runs)")

    def handle(self, *args, key, name, unmapped_window_hours, unmapped_lifetime_days,
               simple_content_access, **options):
        settings = {}
        if unmapped_window_hours is not None:
            settings["unmapped_window"] = timedelta(hours=unmapped_window_hours)
        if unmapped_lifetime_days is not None:
            settings["unmapped_lifetime"] = timedelta(days=unmapped_lifetime_days)
        if simple_content_access:
            settings["content_access_mode"] = Organization.ContentAccess.SCA
        try:
            org = create_org(key, name, **settings)
        except ValidationError as exc:
            raise command_error(exc) from None
        self.stdout.write(self.style.SUCCESS(f"Created organization {org.key} ({org.name})."))
        self.stdout.write(
            f"  unmapped guest window {_duration(org.unmapped_window)}, temporary entitlement "
            f"lifetime {_duration(org.unmapped_lifetime)}, content access: "
            f"{org.get_content_access_mode_display()}"
        )
