"""The world of domain.md section 9, built through the services, and small readers for it."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from hypervisors import services as mapping
from orgs.models import Organization, System
from orgs.services import create_org
from subscriptions import services as subs
from subscriptions.explain import explain
from subscriptions.models import Entitlement, Pool

GUEST_PRODUCT = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server"}]


def acme() -> Organization:
    """Org ACME with VDC (unlimited guests, derived RHEL-G), RHEL-G (provides 479) and RHEL-4G
    (virt_limit 4, provides 479)."""
    org = create_org("ACME", "ACME Corp")
    subs.create_product(org, "479", "Red Hat Enterprise Linux Server")
    subs.create_product(org, "RHEL-G", "RHEL for Virtual Datacenters (guest)", provided=["479"])
    subs.create_product(org, "VDC", "Virtual Datacenter",
                        attributes={"virt_limit": "unlimited"}, derived="RHEL-G")
    subs.create_product(org, "RHEL-4G", "RHEL with 4 guests", attributes={"virt_limit": "4"},
                        provided=["479"])
    return org


def subscribe(org: Organization, sku: str, quantity: int):
    return subs.create_subscription(org, sku, quantity)


def report(org: Organization, host: str, guests: list[str], **kwargs) -> System:
    system, _ = mapping.report_hypervisor(org, host, name=host, guests=guests, **kwargs)
    return system


def guest(org: Organization, name: str, uuid: str | None = None,
          registered_at: datetime | None = None, products=GUEST_PRODUCT) -> System:
    return mapping.register_system(
        org, name, facts={"virt.is_guest": "true", "virt.uuid": uuid or name},
        installed_products=products, registered_at=registered_at,
    )


def physical(org: Organization, name: str, facts: dict | None = None, products=GUEST_PRODUCT) -> System:
    return mapping.register_system(org, name, facts=facts or {}, installed_products=products)


def reload(system: System) -> System:
    return System.objects.select_related("org", "current_host").get(pk=system.pk)


def status(system: System) -> str:
    return subs.compliance_for(reload(system)).status


def ents(system: System) -> list[Entitlement]:
    return list(Entitlement.objects.filter(system_id=system.pk)
                .select_related("pool__product", "pool__requires_host", "pool__subscription__product"))


def pools_of(sku: str, type: str) -> list[Pool]:
    return list(Pool.objects.filter(subscription__product__sku=sku, type=type))


def host_of(system: System) -> System | None:
    return reload(system).current_host


def explanation(system: System) -> dict:
    (item,) = explain(reload(system))
    return item.as_dict()


def hours_ago(hours: float) -> datetime:
    return timezone.now() - timedelta(hours=hours)
