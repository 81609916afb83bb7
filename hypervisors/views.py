"""Web UI pages: hypervisors, systems and reports of one org (issue 5, pages 3, 4 and 6).

Every queryset is filtered by ``self.org``. List pages run a constant number of queries per
page (counts and "subscribed"/coverage flags are annotated subqueries); detail pages find the
registered systems behind reported guests and their entitlements set-based. Changes go
through the services (attach, remove_entitlement, enqueue_resolution), never direct writes.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.fields.json import KeyTextTransform
from django.http import Http404
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from hypervisors.api import DETAIL_GUESTS, HISTORY_LENGTH, _count, attach_registered, guests_of
from hypervisors.forms import (
    AttachForm,
    HypervisorFilterForm,
    ReportFilterForm,
    SystemFilterForm,
    pool_label,
)
from hypervisors.models import GuestHostInterval, GuestId, Report
from orgs.models import System
from sam.errors import EntitlementRefused, NotFound
from sam.ui import OrgPageMixin
from subscriptions import engine
from subscriptions import services as subs
from subscriptions.explain import explain
from subscriptions.models import Entitlement, Pool

PAGE_SIZE = 50
PREVIEW_GUESTS = 500
TIMELINE_LENGTH = 200
LINK_KINDS = {"host_entitlement": "host's entitlement"}


# --- Helpers ----------------------------------------------------------------------------------

def _page(request, queryset):
    """One page of ``queryset`` (a COUNT and a slice) and the query string without ``page``."""
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return page, params.urlencode()


def _current_entitlements(org, now):
    """Entitlements in force now (their own period and their pool's)."""
    return Entitlement.objects.filter(org=org, start__lte=now, end__gt=now,
                                      pool__start__lte=now, pool__end__gt=now)


def _coverage_flags(org, now) -> dict:
    """Annotations for System querysets: a current full entitlement / a temporary one."""
    current = _current_entitlements(org, now).filter(system=OuterRef("pk"))
    return {
        "has_full": Exists(current.exclude(pool__type=Pool.Type.UNMAPPED_GUEST)),
        "has_temp": Exists(current.filter(pool__type=Pool.Type.UNMAPPED_GUEST)),
    }


def _coverage(has_full: bool, has_temp: bool) -> str:
    return "covered" if has_full else ("temporary" if has_temp else "uncovered")


def hypervisors_of(org):
    """The org's hypervisors: systems with a hypervisor id, or of type hypervisor."""
    return System.objects.filter(org=org).filter(
        Q(hypervisor_id__isnull=False) | Q(type=System.Type.HYPERVISOR))


def _link_href(org_key: str, kind: str, ident: str | None) -> str | None:
    """Where a link of an explanation chain points, when that page exists."""
    if not ident:
        return None
    names = {
        "system": ["hypervisors:system_detail"],
        "host": ["hypervisors:hypervisor_detail"],
        "pool": ["subscriptions:pool_detail"],
        "subscription": ["subscriptions:subscription_detail"],
    }.get(kind, [])
    for name in names:
        try:
            return reverse(name, kwargs={"org_key": org_key, "uuid": ident})
        except NoReverseMatch:
            continue
    return None


def _entitlement_rows(system: System, now) -> list[Entitlement]:
    rows = subs.entitlements_of(system)
    for ent in rows:
        ent.current = engine.active(ent, now)
    return rows


# --- Hypervisors ------------------------------------------------------------------------------

class HypervisorListView(OrgPageMixin, TemplateView):
    template_name = "hypervisors/hypervisor_list.html"

    def get_queryset(self, form: HypervisorFilterForm):
        """The filtered hypervisors (ids and sort keys only: the page is annotated afterwards)."""
        qs = hypervisors_of(self.org).order_by("name", "id")
        data = form.cleaned_data if form.is_valid() else {}
        q = (data.get("q") or "").strip()
        if q:
            qs = qs.filter(Q(name__icontains=q) | Q(hypervisor_id__icontains=q.lower()))
        if data.get("cluster"):
            qs = qs.filter(facts__contains={"hypervisor.cluster": data["cluster"].strip()})
        if data.get("type"):
            qs = qs.filter(facts__contains={"hypervisor.type": data["type"].strip()})
        if data.get("reporter"):
            qs = qs.filter(reporter_id=data["reporter"].strip())
        subscribed = Exists(Entitlement.objects.filter(system=OuterRef("pk")))
        if data.get("subscribed") == "yes":
            qs = qs.filter(subscribed)
        elif data.get("subscribed") == "no":
            qs = qs.filter(~subscribed)
        return qs

    def rows(self, ids: list[int]) -> list[System]:
        """The page's hypervisors with guest counts and the subscribed flag (one query)."""
        return list(System.objects.filter(pk__in=ids).annotate(
            guest_count=_count(GuestId.objects.all(), "host"),
            registered_guest_count=_count(System.objects.all(), "current_host"),
            subscribed=Exists(Entitlement.objects.filter(system=OuterRef("pk"))),
            cluster=KeyTextTransform("hypervisor.cluster", "facts"),
            hv_type=KeyTextTransform("hypervisor.type", "facts"),
        ).defer("facts", "installed_products").order_by("name", "id"))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = HypervisorFilterForm(self.request.GET or None)
        page, query = _page(self.request, self.get_queryset(form).values_list("pk", flat=True))
        page.object_list = self.rows(list(page.object_list))
        filtered = bool(self.request.GET.dict().keys() - {"page"})
        context.update(form=form, page=page, query=query, filtered=filtered)
        return context


class HostMixin(OrgPageMixin):
    """Loads ``self.host``: a hypervisor of ``self.org`` (404 otherwise)."""

    def get_host(self) -> System:
        try:
            return hypervisors_of(self.org).select_related("org").get(uuid=self.kwargs["uuid"])
        except (System.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such hypervisor.") from None

    def attachable_pools(self, now) -> list[Pool]:
        """Current NORMAL pools of the org whose product has virt_limit (hosts' subscriptions)."""
        pools = subs.org_pools(self.org).filter(type=Pool.Type.NORMAL, start__lte=now, end__gt=now)
        return [p for p in pools.order_by("subscription__product__sku", "end", "id")
                if engine.virt_limit(p.subscription.product) is not None]

    def detail_url(self, host: System) -> str:
        return reverse("hypervisors:hypervisor_detail", kwargs={"org_key": self.org.key,
                                                                "uuid": host.uuid})


class HypervisorDetailView(HostMixin, TemplateView):
    template_name = "hypervisors/hypervisor_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        host = self.get_host()
        guest_page = Paginator(guests_of(host).order_by("guest_uuid"), DETAIL_GUESTS).get_page(
            self.request.GET.get("guests"))
        rows = attach_registered(self.org, list(guest_page.object_list))
        registered_ids = {row.registered.id for row in rows if row.registered is not None}
        full: set[int] = set()
        temp: set[int] = set()
        for system_id, pool_type in (_current_entitlements(self.org, now)
                                     .filter(system_id__in=registered_ids)
                                     .values_list("system_id", "pool__type")):
            (temp if pool_type == Pool.Type.UNMAPPED_GUEST else full).add(system_id)
        for row in rows:
            sid = row.registered.id if row.registered is not None else None
            row.coverage = None if sid is None else _coverage(sid in full, sid in temp)
        touched = GuestHostInterval.objects.filter(host=host, report__isnull=False).values("report_id")
        history = (Report.objects.filter(org=self.org).filter(
            Q(id__in=touched) | Q(diff__hypervisors__created__contains=[host.name])
            | Q(diff__hypervisors__updated__contains=[host.name]))
            .only("uuid", "kind", "state", "reporter_id", "created")
            .order_by("-created", "-id")[:HISTORY_LENGTH])
        context.update(
            host=host, facts=sorted(host.facts.items()), guests=rows, guest_page=guest_page,
            entitlements=_entitlement_rows(host, now),
            history=list(history), history_length=HISTORY_LENGTH,
        )
        if self.can_admin:
            context["attach_form"] = AttachForm(pools=self.attachable_pools(now))
        return context


class AttachView(HostMixin, TemplateView):
    """GET: preview which registered guests the subscription would cover; POST: attach it."""

    template_name = "hypervisors/attach_preview.html"
    admin_required = True

    def _pool(self, form: AttachForm):
        return next(p for p in form.pools if str(p.uuid) == form.cleaned_data["pool"])

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        host = self.get_host()
        pools = self.attachable_pools(now)
        form = AttachForm(self.request.GET or None, pools=pools)
        form.pools = pools
        context.update(host=host, form=form, pools=pools)
        if not form.is_valid():
            return context
        pool = self._pool(form)
        catalog = subs.load_catalog(self.org)
        provided = catalog.host_pool_provides_for_guests(pool)
        guests = list(System.objects.filter(org=self.org, current_host=host)
                      .only("uuid", "name", "installed_products", "is_guest")
                      .order_by("name", "id")[:PREVIEW_GUESTS])
        full: set[int] = set()
        temp: set[int] = set()
        for system_id, pool_type in (_current_entitlements(self.org, now)
                                     .filter(system_id__in=[g.id for g in guests])
                                     .values_list("system_id", "pool__type")):
            (temp if pool_type == Pool.Type.UNMAPPED_GUEST else full).add(system_id)
        covered, untouched = [], []
        for g in guests:
            g.coverage = _coverage(g.id in full, g.id in temp)
            g.gains = [catalog.name(p) for p in g.installed_product_ids if p in provided]
            (covered if g.gains else untouched).append(g)
        held = {e.pool_id for e in subs.entitlements_of(host)}
        refusal = engine.check_pool(engine.SystemView(host, None, held), pool, self.org, now)
        context.update(
            pool=pool, pool_label=pool_label(pool), covered=covered, untouched=untouched,
            guest_product=engine.derived_pool_product(pool),
            provided=sorted(catalog.name(p) for p in provided),
            refusal=refusal and engine.refusal_message(refusal, pool), refusal_key=refusal,
            truncated=len(guests) >= PREVIEW_GUESTS,
        )
        return context

    def post(self, request, *args, **kwargs):
        host = self.get_host()
        pools = self.attachable_pools(timezone.now())
        form = AttachForm(request.POST, pools=pools)
        form.pools = pools
        if not form.is_valid():
            messages.error(request, "Not attached: choose one of the listed subscriptions.")
            return redirect(self.detail_url(host))
        pool = self._pool(form)
        try:
            subs.attach(self.org, host.uuid, pool.uuid)
        except EntitlementRefused as exc:
            messages.error(request, f"Not attached: {exc.message} (reason: {exc.reason}).")
        except (NotFound, ValidationError) as exc:
            messages.error(request, f"Not attached: {'; '.join(exc.messages)}")
        else:
            messages.success(request, f"Attached {pool.subscription.product.sku} to {host.name}; "
                                      "its guests are being re-resolved.")
        return redirect(self.detail_url(host))


class RemoveEntitlementView(OrgPageMixin, View):
    """POST: remove one entitlement of a hypervisor or a system (admins)."""

    kind = "hypervisor"

    def post(self, request, *args, **kwargs):
        systems = hypervisors_of(self.org) if self.kind == "hypervisor" else System.objects.filter(
            org=self.org)
        try:
            system = systems.get(uuid=kwargs["uuid"])
            ent = Entitlement.objects.select_related("pool__product").get(
                org=self.org, system=system, uuid=kwargs["entitlement"])
        except (System.DoesNotExist, Entitlement.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such entitlement.") from None
        try:
            subs.remove_entitlement(self.org, ent.uuid)
        except (NotFound, ValidationError) as exc:
            messages.error(request, f"Not removed: {'; '.join(exc.messages)}")
        else:
            messages.success(request, f"Removed {ent.pool.product.sku} from {system.name}.")
        name = "hypervisors:hypervisor_detail" if self.kind == "hypervisor" else \
            "hypervisors:system_detail"
        return redirect(name, org_key=self.org.key, uuid=system.uuid)


# --- Systems ----------------------------------------------------------------------------------

class SystemListView(OrgPageMixin, TemplateView):
    template_name = "hypervisors/system_list.html"

    def get_queryset(self, form: SystemFilterForm, now):
        """The filtered systems (ids and sort keys only: the page is loaded afterwards)."""
        qs = System.objects.filter(org=self.org).order_by("name", "id")
        data = form.cleaned_data if form.is_valid() else {}
        q = (data.get("q") or "").strip()
        if q:
            qs = qs.filter(name__icontains=q)
        kind = data.get("type")
        if kind == "guest":
            qs = qs.filter(is_guest=True)
        elif kind == "hypervisor":
            qs = qs.filter(Q(type=System.Type.HYPERVISOR) | Q(hypervisor_id__isnull=False))
        elif kind == "physical":
            qs = qs.filter(is_guest=False, type=System.Type.SYSTEM, hypervisor_id__isnull=True)
        flags = _coverage_flags(self.org, now)
        coverage = data.get("coverage")
        if coverage == "covered":
            qs = qs.filter(flags["has_full"])
        elif coverage == "temporary":
            qs = qs.filter(~flags["has_full"], flags["has_temp"])
        elif coverage == "uncovered":
            qs = qs.filter(~flags["has_full"], ~flags["has_temp"])
        return qs

    def rows(self, ids: list[int], now) -> list[System]:
        """The page's systems with their host and coverage flags (one query)."""
        rows = list(System.objects.filter(pk__in=ids).select_related("current_host")
                    .annotate(**_coverage_flags(self.org, now))
                    .only("uuid", "name", "type", "is_guest", "hypervisor_id", "installed_products",
                          "last_checkin", "registered_at", "host_unknown_since",
                          "current_host__uuid", "current_host__name")
                    .order_by("name", "id"))
        for system in rows:
            system.coverage = _coverage(system.has_full, system.has_temp)
        return rows

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        form = SystemFilterForm(self.request.GET or None)
        page, query = _page(self.request, self.get_queryset(form, now).values_list("pk", flat=True))
        page.object_list = self.rows(list(page.object_list), now)
        filtered = bool(self.request.GET.dict().keys() - {"page"})
        context.update(form=form, page=page, query=query, filtered=filtered)
        return context


class SystemMixin(OrgPageMixin):
    def get_system(self) -> System:
        try:
            return System.objects.select_related("org", "current_host").get(
                org=self.org, uuid=self.kwargs["uuid"])
        except (System.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such system.") from None


class SystemDetailView(SystemMixin, TemplateView):
    template_name = "hypervisors/system_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        system = self.get_system()
        compliance = subs.compliance_for(system, now)
        items = []
        for item in explain(system, now):
            links = [{"kind": LINK_KINDS.get(link.kind, link.kind), "label": link.label,
                      "href": _link_href(self.org.key, link.kind, link.id)} for link in item.chain]
            items.append({"item": item, "links": links})
        uuids = [u for u in (system.virt_uuid, system.virt_uuid_swapped) if u]
        timeline = list(GuestHostInterval.objects.filter(org=self.org, guest_uuid__in=uuids)
                        .select_related("host", "report").defer("report__payload")
                        .order_by("-started", "-id")[:TIMELINE_LENGTH]) if uuids else []
        context.update(
            system=system, compliance=compliance, explanations=items,
            entitlements=_entitlement_rows(system, now), timeline=timeline,
            facts=sorted(system.facts.items()),
            is_hypervisor=bool(system.hypervisor_id) or system.type == System.Type.HYPERVISOR,
        )
        return context


class ResolveView(SystemMixin, View):
    """POST: re-resolve the system now (in a worker, after commit)."""

    def post(self, request, *args, **kwargs):
        system = self.get_system()
        with transaction.atomic():
            subs.enqueue_resolution([system.id], "manual")
        messages.success(request, f"Re-resolution of {system.name} requested.")
        return redirect("hypervisors:system_detail", org_key=self.org.key, uuid=system.uuid)


# --- Reports ----------------------------------------------------------------------------------

class ReportListView(OrgPageMixin, TemplateView):
    template_name = "hypervisors/report_list.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = ReportFilterForm(self.request.GET or None)
        qs = (Report.objects.filter(org=self.org)
              .only("uuid", "kind", "state", "reporter_id", "hypervisor_count", "guest_count",
                    "created", "finished")
              .order_by("-created", "-id"))
        data = form.cleaned_data if form.is_valid() else {}
        if data.get("state"):
            qs = qs.filter(state=data["state"])
        if data.get("reporter"):
            qs = qs.filter(reporter_id=data["reporter"].strip())
        page, query = _page(self.request, qs)
        filtered = bool(self.request.GET.dict().keys() - {"page"})
        context.update(form=form, page=page, query=query, filtered=filtered)
        return context


class ReportDetailView(OrgPageMixin, TemplateView):
    template_name = "hypervisors/report_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        try:
            report = (Report.objects.filter(org=self.org).select_related("superseded_by")
                      .defer("payload", "superseded_by__payload").get(uuid=self.kwargs["uuid"]))
        except (Report.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such report.") from None
        diff = report.diff if isinstance(report.diff, dict) else {}
        hypervisors = diff.get("hypervisors") or {}
        guests = diff.get("guests") or {}
        counts = diff.get("counts") or {}
        context.update(
            report=report, running=report.state in Report.OPEN_STATES, has_diff=bool(diff),
            created=hypervisors.get("created") or [], updated=hypervisors.get("updated") or [],
            added=guests.get("added") or [], removed=guests.get("removed") or [],
            moved=guests.get("moved") or [], counts=counts,
        )
        return context
