"""Fixed actors for API tests (architecture.md habit 11): every endpoint test goes through
org admin, org viewer, reporter token, another org's admin and anonymous."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.test import APIClient

from orgs import services as orgs
from orgs.models import Organization

PASSWORD = "actor-pass-word-1"


@dataclass
class Actors:
    org: Organization
    other: Organization
    clients: dict[str, APIClient]
    reporter_token: str


def make_actors(org: Organization) -> Actors:
    """Members of ``org`` and of a second org ``OTHER``; clients authenticated as each."""
    other = Organization.objects.filter(key="OTHER").first() or orgs.create_org("OTHER", "Other")
    admin = orgs.set_member_role(org, "org-admin", "admin", password=PASSWORD)
    viewer = orgs.set_member_role(org, "org-viewer", "viewer", password=PASSWORD)
    stranger = orgs.set_member_role(other, "other-admin", "admin", password=PASSWORD)
    _, token = orgs.create_token(org, "virt-who", "reporter", created_by=admin)
    clients = {}
    for name, user in (("admin", admin), ("viewer", viewer), ("other_admin", stranger)):
        client = APIClient()
        client.force_authenticate(user)
        clients[name] = client
    reporter = APIClient()
    reporter.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    clients["reporter"] = reporter
    clients["anonymous"] = APIClient()
    return Actors(org=org, other=other, clients=clients, reporter_token=token)


# Expected status for (actor, read or write) on an org-scoped endpoint of ``org``.
READ = {"admin": 200, "viewer": 200, "reporter": 404, "other_admin": 404, "anonymous": 401}
WRITE = {"viewer": 403, "reporter": 404, "other_admin": 404, "anonymous": 401}
