"""Why each installed product of a system is (not) covered — the one place that says it.

For a covered product: the chain entitlement → pool → (host's entitlement → subscription).
For an uncovered one: the first failing link in plain words with a stable reason key and what
to do about it (domain.md 7). The API and the UI both show this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from orgs.models import System
from subscriptions import engine
from subscriptions.catalog import entitlements_of, load_catalog
from subscriptions.labels import pool_type_label
from subscriptions.models import UNLIMITED, Entitlement, EntitlementCertificate, Pool
from subscriptions.services import usable_pools


@dataclass
class Link:
    kind: str  # system | entitlement | pool | host | host_entitlement | subscription
    label: str
    id: str | None = None


@dataclass
class ProductExplanation:
    product_id: str
    product_name: str
    status: str  # valid | partial | invalid
    reason: str | None
    message: str
    action: str = ""
    chain: list[Link] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{max(1, seconds // 60)} min"


def _used(pool: Pool) -> str:
    if pool.quantity == UNLIMITED:
        return f"{pool.consumed} used, unlimited"
    return f"{pool.consumed} of {pool.quantity} used"


def _stamp(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


def explain(system: System, now: datetime | None = None) -> list[ProductExplanation]:
    """One explanation per installed product of ``system``, in installed order."""
    now = now or timezone.now()
    org = system.org
    catalog = load_catalog(org)
    ents = entitlements_of(system)
    status = engine.compliance(system, ents, catalog, org, now)
    pools: list[Pool] | None = None
    serials = dict(EntitlementCertificate.objects.filter(system=system)
                   .values_list("entitlement_id", "serial")) if ents else {}
    result = []
    for product_id in system.installed_product_ids:
        product_status = status.products[product_id]
        name = catalog.name(product_id)
        if product_status.entitlements:
            result.append(_covered(system, product_id, name, product_status, now, serials))
            continue
        if pools is None:
            pools = usable_pools(org, now, system.current_host_id if system.is_guest else None)
        result.append(_uncovered(system, product_id, name, pools, catalog, now))
    return result


def _chain_for(system: System, ent: Entitlement, serials: dict[int, int]) -> list[Link]:
    pool = ent.pool
    chain = [
        Link("system", system.name, str(system.uuid)),
        Link("entitlement", f"{pool.product.sku} × {ent.quantity}", str(ent.uuid)),
    ]
    if ent.id in serials:  # what subscription-manager holds for it
        chain.append(Link("certificate", f"serial {serials[ent.id]}", str(serials[ent.id])))
    chain += [
        Link("pool", f"{pool_type_label(pool.type)} of {pool.product.name} ({_used(pool)})", str(pool.uuid)),
    ]
    host = pool.requires_host if pool.requires_host_id else None
    if host is not None:
        chain.append(Link("host", host.name, str(host.uuid)))
        source = pool.source_entitlement
        if source is not None:
            chain.append(Link("host_entitlement", f"{source.pool.product.sku} × {source.quantity}",
                              str(source.uuid)))
    subscription = pool.subscription
    chain.append(Link("subscription", f"{subscription.product.sku} × {subscription.quantity}",
                      str(subscription.uuid)))
    return chain


def _covered(system: System, product_id: str, name: str, product_status, now,
             serials: dict[int, int]) -> ProductExplanation:
    ents = sorted(product_status.entitlements,
                  key=lambda e: (e.pool.unmapped_guests_only, e.end))
    ent = ents[0]
    pool = ent.pool
    chain = _chain_for(system, ent, serials)
    sku = pool.subscription.product.sku
    reason = product_status.reasons[0] if product_status.reasons else None
    action = ""
    if pool.unmapped_guests_only:
        message = (f"temporary entitlement ends in {_duration(ent.end - now)}: the guest is not "
                   f"reported by any hypervisor yet")
        action = "Make sure virt-who reports the hypervisor that runs this guest."
    elif pool.requires_host_id:
        host = pool.requires_host
        message = f"covered through host {host.name}'s subscription {sku}"
        if system.is_guest and system.current_host_id is None:
            since = system.host_unknown_since
            message += (f"; host unknown since {_stamp(since)}" if since
                        else "; the guest is not reported by any hypervisor now")
            action = "Check virt-who: no hypervisor reports this guest any more."
    elif system.is_guest and system.current_host_id is None and not engine.within_unmapped_window(
            system, system.org, now):
        message = ("covered as a physical system: not reported by any hypervisor, "
                   f"temporary window passed (subscription {sku}, {_used(pool)})")
        action = "Report the guest's hypervisor with virt-who to inherit the host's subscription."
    else:
        message = f"covered by subscription {sku} ({_used(pool)})"
    if reason == "SOCKETS":
        message += f"; the stack covers fewer than the system's {system.sockets} sockets"
        action = f"Attach more units of {sku} to cover every socket."
    return ProductExplanation(product_id, name, product_status.status, reason, message, action, chain)


def _add_host_unit(sku: str, host: System, org) -> str:
    """Advice when every host subscription is used up. With hypervisor auto-attach on, a unit
    added to the pool goes to whichever host is resolved first, not necessarily this one."""
    if host.autoheal and org.hypervisor_autobind_enabled:
        return (f"Add quantity to {sku} (or free a unit from another host), then attach it to "
                f"host {host.name}: with hypervisor auto-attach on, a new unit may go to "
                "another host without a subscription first.")
    return f"Add quantity to {sku} or free a unit from another host, then attach it to host {host.name}."


@dataclass
class _Uncovered:
    """One uncovered installed product of a system, while its explanation is worked out."""

    system: System
    product_id: str
    name: str
    hint: str  # why auto-attach does not run for this system, or ""
    chain: list[Link]

    def refused(self, reason: str, message: str, action: str = "") -> ProductExplanation:
        return ProductExplanation(self.product_id, self.name, "invalid", reason, message, action,
                                  self.chain)


def _uncovered(system: System, product_id: str, name: str, pools: list[Pool],
               catalog: engine.Catalog, now: datetime) -> ProductExplanation:
    """The first failing link for an uncovered product: through the guest's host when it has
    one, else (guest without host, physical system) through the pools the system may use."""
    case = _Uncovered(system, product_id, name, _autoattach_hint(system),
                      [Link("system", system.name, str(system.uuid))])
    providing = [p for p in pools if product_id in catalog.pool_provides(p)]
    host = system.current_host if system.is_guest and system.current_host_id is not None else None
    if host is not None:
        return _through_host(case, host, pools, providing, catalog)
    prefix, refusal = _without_host(case, providing, now)
    return refusal or _own_pools(case, providing, prefix, now)


def _autoattach_hint(system: System) -> str:
    org = system.org
    if not system.autoheal:
        return "auto-attach is off for this system"
    if not org.autobind_enabled:
        return f"auto-attach is disabled for organization {org.key}"
    return ""


def _through_host(case: _Uncovered, host: System, pools: list[Pool], providing: list[Pool],
                  catalog: engine.Catalog) -> ProductExplanation:
    """A guest with a known host: the host's derived pool, else the host's subscriptions."""
    name, org = case.name, case.system.org
    case.chain.append(Link("host", host.name, str(host.uuid)))
    derived = [p for p in providing if p.requires_host_id == host.id]
    if derived:
        pool = derived[0]
        label = f"{pool_type_label(pool.type)} of {pool.product.name}"
        case.chain.append(Link("pool", label, str(pool.uuid)))
        if pool.quantity != UNLIMITED and pool.consumed >= pool.quantity:
            return case.refused("pool_exhausted", f"pool exhausted ({_used(pool)})",
                                f"Host {host.name} allows {pool.quantity} guests; attach another "
                                "subscription with virtual guests to it.")
    host_options = [p for p in pools if engine.is_host_subscription(p)
                    and case.product_id in catalog.host_pool_provides_for_guests(p)]
    if not host_options:
        return case.refused("no_host_subscription",
                            f"host {host.name} has no subscription with virtual guests that "
                            f"provides {name}",
                            "Buy or import a subscription with virtual guests (e.g. a virtual "
                            "data-center subscription) and attach it to the host.")
    free = [p for p in host_options if p.quantity == UNLIMITED or p.consumed < p.quantity]
    if not free:
        pool = host_options[0]
        return case.refused("pool_exhausted",
                            f"no subscription left for host {host.name} "
                            f"({pool.subscription.product.sku}: {_used(pool)})",
                            _add_host_unit(pool.subscription.product.sku, host, org))
    sku = free[0].subscription.product.sku
    if not host.autoheal or not org.hypervisor_autobind_enabled:
        return case.refused("host_not_entitled",
                            f"host {host.name} has no subscription with virtual guests "
                            "(hosts are not auto-attached)",
                            f"Attach {sku} to host {host.name}.")
    if case.hint:
        return case.refused("autoheal_disabled", f"not covered: {case.hint}",
                            f"Attach {sku} to host {host.name}.")
    return case.refused("not_covered", f"host {host.name} could take subscription "
                        f"{sku}; coverage is being resolved", "")


def _without_host(case: _Uncovered, providing: list[Pool],
                  now: datetime) -> tuple[str, ProductExplanation | None]:
    """What to say first about a system without a host (a guest no hypervisor reports: in or
    past its temporary window), and the refusal when its temporary pools are used up."""
    system = case.system
    if not system.is_guest:
        return "", None
    if not engine.within_unmapped_window(system, system.org, now):
        return ("not covered as a physical system: not reported by any hypervisor, "
                "temporary window passed"), None
    prefix = "guest is not reported by any hypervisor"
    if system.host_unknown_since:
        prefix += f" (host unknown since {_stamp(system.host_unknown_since)})"
    temporary = [p for p in providing if p.unmapped_guests_only]
    if temporary and all(p.quantity != UNLIMITED and p.consumed >= p.quantity for p in temporary):
        return prefix, case.refused("pool_exhausted",
                                    f"{prefix}; temporary pool exhausted ({_used(temporary[0])})",
                                    "Make sure virt-who reports this guest's hypervisor.")
    return prefix, None


# Which refusal of the system's own pools to name first, and how.
_FIRST_REFUSALS = ("pool_exhausted", "physical_only", "virt_only")


def _own_pools(case: _Uncovered, providing: list[Pool], prefix: str,
               now: datetime) -> ProductExplanation:
    """The pools the system could take itself (no host or temporary pools): the most telling
    refusal among them, or that resolution has yet to run (or may not)."""
    view = engine.SystemView(case.system, None, set())
    reasons = [(engine.check_pool(view, pool, case.system.org, now), pool) for pool in providing
               if not (pool.requires_host_id or pool.unmapped_guests_only)]
    sep = "; " if prefix else ""
    if not reasons:
        return case.refused("no_subscription", f"{prefix}{sep}no subscription provides {case.name}",
                            f"Buy or import a subscription that provides {case.name}.")
    for key in _FIRST_REFUSALS:
        for reason, pool in reasons:
            if reason == key:
                if key == "pool_exhausted":
                    message = f"pool exhausted ({_used(pool)})"
                    action = f"Add quantity to {pool.subscription.product.sku}."
                else:
                    message = f"{pool.subscription.product.sku}: {engine.refusal_message(key)}"
                    action = ""
                return case.refused(key, f"{prefix}{sep}{message}", action)
    reason, pool = next(((r, p) for r, p in reasons if r), (None, reasons[0][1]))
    if reason:
        return case.refused(reason, f"{prefix}{sep}{pool.subscription.product.sku}: "
                            f"{engine.refusal_message(reason, pool)}")
    return case.refused("autoheal_disabled" if case.hint else "not_covered",
                        f"{prefix}{sep}{case.hint or 'coverage is being resolved'}",
                        f"Attach {pool.subscription.product.sku} to this system.")
