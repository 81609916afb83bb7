"""``manage.py addmember KEY USERNAME --role ROLE [--password-stdin] [--confirm]``: give a user a
role. The operator acts as a superuser: ``--password-stdin`` also sets an existing user's
password (through ``orgs.services.set_member_role``, like the web UI and the API)."""

from __future__ import annotations

import sys

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hypervisors.reporters import token_impact
from orgs.services import OPERATOR, ROLES, get_org, set_member_role
from sam.errors import ConfirmationRequired
from sam.management.commands._util import command_error


class Command(BaseCommand):
    help = ("Give USERNAME exactly ROLE in organization KEY; the user is created when missing "
            "(with an unusable password unless --password-stdin).")
    stealth_options = ("stdin",)  # call_command(..., stdin=io.StringIO("pw\n")) in tests

    def add_arguments(self, parser):
        parser.add_argument("key", help="organization key")
        parser.add_argument("username")
        # No argparse choices: an unknown role gets the service's message (and exit code 1).
        parser.add_argument("--role", required=True, help=f"one of {', '.join(ROLES)}")
        parser.add_argument("--password-stdin", action="store_true",
                            help="read the user's password from the first line of stdin")
        parser.add_argument("--confirm", action="store_true",
                            help="go ahead when the new role revokes API tokens the user created")

    def handle(self, *args, key, username, role, password_stdin, confirm=False, **options):
        stdin = options.get("stdin") or sys.stdin
        try:
            org = get_org(key)
            password = None
            if password_stdin:
                password = self._read_password(stdin)
            User = get_user_model()
            existed = User.objects.filter(username=str(username).strip()).exists()
            user = set_member_role(org, username, role, password=password, actor=OPERATOR,
                                   confirm=confirm)
        except ValidationError as exc:
            raise command_error(exc) from None
        except ConfirmationRequired as exc:
            reporters = ", ".join(token_impact(org, exc.tokens)["reporters"])
            raise CommandError(f"{exc.message} These virt-who reporters would stop working: "
                               f"{reporters}. Run again with --confirm.") from None
        what = "Updated" if existed else "Created"
        note = ""
        if password is not None:
            note = " with the password from stdin"
        elif not existed:
            note = " (no usable password: set one with --password-stdin or changepassword)"
        self.stdout.write(self.style.SUCCESS(
            f"{what} user {user.get_username()}{note}; role {role} in organization {org.key}."
        ))

    @staticmethod
    def _read_password(stdin) -> str:
        """The first line of stdin; the service checks it with Django's password validators."""
        line = stdin.readline() if stdin is not None else ""
        password = line.strip()
        if not password:
            raise CommandError("--password-stdin: no password on stdin (the first line is empty).")
        return password
