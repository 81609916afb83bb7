"""factory_boy factories for rows that need no domain rules; the rest goes through services."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from orgs.models import Organization, System


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization
        django_get_or_create = ("key",)

    key = factory.Sequence(lambda n: f"org{n}")
    name = factory.LazyAttribute(lambda o: f"Organization {o.key}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("s3cret-pass-word")


class SystemFactory(factory.django.DjangoModelFactory):
    """A bare system row (no resolution); use hypervisors.services.register_system for flows."""

    class Meta:
        model = System

    org = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"system{n}.example.com")
    registered_at = factory.LazyFunction(timezone.now)


def stored_report(org: Organization, hosts: dict[str, list[str]], reporter: str = "r1"):
    """A check-in as accept stores it (CREATED, body compressed), for a test to apply itself."""
    import json
    import zlib

    from hypervisors.models import Report

    body = json.dumps({"hypervisors": [
        {"hypervisorId": {"hypervisorId": name}, "name": name,
         "guestIds": [{"guestId": g} for g in guests]} for name, guests in hosts.items()]}).encode()
    return Report.objects.create(org=org, reporter_id=reporter, payload=zlib.compress(body, 1),
                                 payload_size=len(body), state=Report.State.CREATED)
