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
from django.db.models.fields.json import KeyTextTransform
from django.http import Http404
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views import View
from django.views.generic import TemplateView

from hypervisors import services as hv_services
from hypervisors.filters import HypervisorFilter, SystemFilter, ui_filterset
from hypervisors.forms import AttachForm, ReportFilterForm, pool_label
from hypervisors.models import REPORT_BLOBS, GuestHostInterval, GuestId, Report
from hypervisors.queries import DETAIL_GUESTS, HISTORY_LENGTH, attach_registered, guests_of, per_host_count
from orgs.models import ConsumerIdentity, System, SystemEvent, coverage_flags, coverage_word
from sam.errors import EntitlementRefused, NotFound
from sam.ui import OrgPageMixin, batched, csv_response
from subscriptions import catalog, engine
from subscriptions import services as subs
from subscriptions.explain import explain
from subscriptions.models import Entitlement, EntitlementCertificate, Pool

PAGE_SIZE = 50
PREVIEW_GUESTS = 500
TIMELINE_LENGTH = 200
# Reasons a guest on a known host is not covered that attaching a host subscription can fix.
ATTACH_HELPS = {"pool_exhausted", "host_not_entitled", "autoheal_disabled"}
LINK_KINDS = {"host_entitlement": "host's entitlement"}


# --- Helpers ----------------------------------------------------------------------------------

def _page(request, queryset):
    """One page of ``queryset`` (a COUNT and a slice) and the query string without ``page``."""
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return page, params.urlencode()


def hypervisors_of(org):
    return System.objects.filter(org=org).hypervisors()


def _coverage_of(system_ids, now) -> dict[int, str]:
    """Coverage word of each system (one query)."""
    return {row["pk"]: coverage_word(row["has_full"], row["has_temp"])
            for row in System.objects.filter(pk__in=system_ids).with_coverage(now)
            .values("pk", "has_full", "has_temp")}


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
    rows = catalog.entitlements_of(system)
    certs = {c.entitlement_id: c for c in EntitlementCertificate.objects.filter(
        entitlement__in=[e.id for e in rows]).only("entitlement_id", "serial", "start", "end")}
    for ent in rows:
        ent.current = engine.active(ent, now)
        ent.cert = certs.get(ent.id)  # what subscription-manager downloads for it
    return rows


# --- Hypervisors ------------------------------------------------------------------------------

class HypervisorListView(OrgPageMixin, TemplateView):
    template_name = "hypervisors/hypervisor_list.html"

    def rows(self, ids: list[int]) -> list[System]:
        """The page's hypervisors with guest counts and the subscribed flag (one query)."""
        return list(System.objects.filter(pk__in=ids).annotate(
            guest_count=per_host_count(GuestId.objects.all(), "host"),
            registered_guest_count=per_host_count(System.objects.all(), "current_host"),
            subscribed=coverage_flags(timezone.now())["subscribed"],
            cluster=KeyTextTransform("hypervisor.cluster", "facts"),
            hv_type=KeyTextTransform("hypervisor.type", "facts"),
        ).defer("facts", "installed_products").order_by("name", "id"))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        filters = ui_filterset(HypervisorFilter, self.request.GET,
                               hypervisors_of(self.org).order_by("name", "id"))
        page, query = _page(self.request, filters.qs.values_list("pk", flat=True))
        page.object_list = self.rows(list(page.object_list))
        filtered = bool(self.request.GET.dict().keys() - {"page"})
        context.update(form=filters.form, page=page, query=query, filtered=filtered)
        return context


class HypervisorExportView(OrgPageMixin, View):
    """The hypervisor list as CSV: the list's filter applied, streamed, ordered by id."""

    def get(self, request, *args, **kwargs):
        filters = ui_filterset(HypervisorFilter, request.GET, hypervisors_of(self.org).order_by("pk"))
        rows = filters.qs.annotate(
            subscribed=coverage_flags(timezone.now())["subscribed"],
            cluster=KeyTextTransform("hypervisor.cluster", "facts"),
            hv_type=KeyTextTransform("hypervisor.type", "facts"),
            guest_count=per_host_count(GuestId.objects.all(), "host"),
        ).values_list("pk", "uuid", "name", "hypervisor_id", "cluster", "hv_type", "reporter_id",
                      "guest_count", "subscribed", "last_checkin")
        return csv_response(
            f"{self.org.key}-hypervisors.csv",
            ["uuid", "name", "hypervisor_id", "cluster", "type", "reporter", "reported_guests",
             "subscribed", "last_checkin"],
            ([*row[1:8], "yes" if row[8] else "no", row[9] and row[9].isoformat()]
             for row in batched(rows)))


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
                if engine.is_host_subscription(p)]

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
        coverage = _coverage_of(registered_ids, now)
        for row in rows:
            row.coverage = None if row.registered is None else coverage[row.registered.id]
        history = (Report.objects.touching(host)
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
        products = catalog.load_catalog(self.org)
        provided = products.host_pool_provides_for_guests(pool)
        guests = list(System.objects.filter(org=self.org, current_host=host)
                      .only("uuid", "name", "installed_products", "is_guest")
                      .order_by("name", "id")[:PREVIEW_GUESTS])
        coverage = _coverage_of([g.id for g in guests], now)
        covered, untouched = [], []
        for g in guests:
            g.coverage = coverage[g.id]
            g.gains = [products.name(p) for p in g.installed_product_ids if p in provided]
            (covered if g.gains else untouched).append(g)
        held = {e.pool_id for e in catalog.entitlements_of(host)}
        refusal = engine.check_pool(engine.SystemView(host, None, held), pool, self.org, now)
        context.update(
            pool=pool, pool_label=pool_label(pool), covered=covered, untouched=untouched,
            guest_product=engine.derived_pool_product(pool),
            provided=sorted(products.name(p) for p in provided),
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

    def rows(self, ids: list[int], now) -> list[System]:
        """The page's systems with their host and coverage flags (one query)."""
        rows = list(System.objects.filter(pk__in=ids).select_related("current_host")
                    .with_coverage(now)
                    .only("uuid", "name", "type", "is_guest", "hypervisor_id", "installed_products",
                          "last_checkin", "registered_at", "host_unknown_since",
                          "client_requires_sca", "current_host__uuid", "current_host__name")
                    .order_by("name", "id"))
        for system in rows:
            system.coverage = coverage_word(system.has_full, system.has_temp)
        return rows

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        filters = ui_filterset(SystemFilter, self.request.GET,
                               System.objects.filter(org=self.org).order_by("name", "id"))
        page, query = _page(self.request, filters.qs.values_list("pk", flat=True))
        page.object_list = self.rows(list(page.object_list), now)
        filtered = bool(self.request.GET.dict().keys() - {"page"})
        context.update(form=filters.form, page=page, query=query, filtered=filtered)
        return context


class SystemExportView(OrgPageMixin, View):
    """The system list as CSV: the list's filter applied, streamed, ordered by id."""

    def get(self, request, *args, **kwargs):
        filters = ui_filterset(SystemFilter, request.GET,
                               System.objects.filter(org=self.org).order_by("pk"))
        rows = filters.qs.with_coverage(timezone.now()).values_list(
            "pk", "uuid", "name", "type", "is_guest", "current_host__name", "has_full", "has_temp",
            "last_checkin")
        kind = {True: "guest", False: "physical"}
        return csv_response(
            f"{self.org.key}-systems.csv",
            ["uuid", "name", "type", "host", "coverage", "last_checkin"],
            ([row[1], row[2], "hypervisor" if row[3] == System.Type.HYPERVISOR else kind[row[4]],
              row[5], coverage_word(row[6], row[7]), row[8] and row[8].isoformat()]
             for row in batched(rows)))


class SystemMixin(OrgPageMixin):
    def get_system(self) -> System:
        try:
            return System.objects.select_related("org", "current_host").get(
                org=self.org, uuid=self.kwargs["uuid"])
        except (System.DoesNotExist, ValidationError, ValueError):
            raise Http404("No such system.") from None


class SystemDetailView(SystemMixin, TemplateView):
    template_name = "hypervisors/system_detail.html"

    def _attach_url(self, system: System, item) -> str | None:
        """For an uncovered guest on a known host that a host subscription would cover: the
        host's attach page (admins only)."""
        if (self.can_admin and item.status == "invalid" and system.is_guest
                and system.current_host_id is not None and item.reason in ATTACH_HELPS):
            return reverse("hypervisors:hypervisor_attach",
                           kwargs={"org_key": self.org.key, "uuid": system.current_host.uuid})
        return None

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        system = self.get_system()
        compliance = subs.compliance_for(system, now)
        items = []
        for item in explain(system, now):
            links = [{"kind": LINK_KINDS.get(link.kind, link.kind), "label": link.label,
                      "href": _link_href(self.org.key, link.kind, link.id)} for link in item.chain]
            items.append({"item": item, "links": links,
                          "attach_url": self._attach_url(system, item)})
        uuids = [u for u in (system.virt_uuid, system.virt_uuid_swapped) if u]
        timeline = list(GuestHostInterval.objects.filter(org=self.org, guest_uuid__in=uuids)
                        .select_related("host", "report").defer("report__payload", "report__timeline")
                        .order_by("-started", "-id")[:TIMELINE_LENGTH]) if uuids else []
        identity = ConsumerIdentity.objects.filter(system=system).first()
        if identity is not None:
            registered_via = identity.get_registered_via_display()
        elif system.reporter_id or (system.hypervisor_id and system.type == System.Type.HYPERVISOR):
            registered_via = "virt-who"
        else:
            registered_via = "API"
        context.update(
            identity=identity, registered_via=registered_via,
            clone_events=list(SystemEvent.objects.filter(
                system=system, kind=SystemEvent.Kind.POSSIBLE_CLONE)[:5]),
            system_events=list(SystemEvent.objects.filter(system=system)[:10]),
            system=system, compliance=compliance, explanations=items,
            entitlements=_entitlement_rows(system, now), timeline=timeline,
            facts=sorted(system.facts.items()),
            is_hypervisor=system.type == System.Type.HYPERVISOR,
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


class SystemDeleteView(SystemMixin, TemplateView):
    """GET: what deleting the system takes away; POST: delete it (the API's delete service).
    Admins only."""

    admin_required = True
    template_name = "hypervisors/system_confirm_delete.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        system = self.get_system()
        context.update(system=system, impact=hv_services.deletion_impact(self.org, system),
                       is_hypervisor=hypervisors_of(self.org).filter(pk=system.pk).exists())
        return context

    def post(self, request, *args, **kwargs):
        system = self.get_system()
        try:
            hv_services.delete_system(self.org, system.uuid, trigger="ui",
                                       deleted_by=request.user.get_username())
        except NotFound:
            raise Http404("No such system.") from None
        messages.success(request, f"System {system.name} deleted.")
        return redirect("hypervisors:system_list", org_key=self.org.key)


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
                      .defer(*REPORT_BLOBS).get(uuid=self.kwargs["uuid"]))
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
