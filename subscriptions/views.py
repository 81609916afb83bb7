"""Web UI pages: subscriptions, pools, products and the bulk import (issue 5, page 5).

Every view starts with ``OrgPageMixin`` (org from the URL; 404 for an org the user may not see,
403 for a write by a viewer). Reads reuse the REST API's querysets, so a list page costs the
same number of queries whatever its size; writes go through ``subscriptions.services`` and
``subscriptions.importer`` only.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.views import View
from django.views.generic import FormView, ListView, TemplateView

from sam.ui import BadFormIs400, OrgPageMixin, batched, csv_response
from subscriptions import importer, queries, services
from subscriptions.forms import ImportForm, PoolFilterForm, SubscriptionCreateForm, SubscriptionEditForm
from subscriptions.models import UNLIMITED, Entitlement, Pool, Product, Subscription

PAGE_SIZE = 50
CONSUMERS_SHOWN = 20  # per pool on the subscription page; the pool page lists them all
EXPIRY_WARNING = timedelta(days=90)
UI_TRIGGER = "ui"


def _subscriptions(org):
    """``queries.subscriptions`` of the org (as the API lists them)."""
    return queries.subscriptions().filter(org=org)


def _mark_expiry(sub: Subscription, now) -> Subscription:
    sub.expired = sub.end <= now
    sub.expires_soon = not sub.expired and sub.end <= now + EXPIRY_WARNING
    sub.days_left = max(0, (sub.end - now).days)
    sub.normal_pool = next((p for p in sub.primary_pools if p.type == Pool.Type.NORMAL), None)
    return sub


def _local(sub: Subscription) -> Subscription:
    """Only locally created subscriptions are edited here; the manifest owns the others."""
    if sub.managed:
        raise PermissionDenied("This subscription comes from the Red Hat manifest and is read-only.")
    return sub


def _mark_utilisation(pool: Pool) -> Pool:
    pool.utilisation = None if pool.quantity in (UNLIMITED, 0) else round(100 * pool.consumed / pool.quantity)
    return pool


def _page(request, queryset, name: str = "page"):
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get(name))


# --- Subscriptions ----------------------------------------------------------------------------

class SubscriptionListView(OrgPageMixin, ListView):
    template_name = "subscriptions/subscription_list.html"
    context_object_name = "subscriptions"
    paginate_by = PAGE_SIZE

    def _filtered(self, queryset):
        return queryset.filter(product__sku=self.product) if self.product else queryset

    def get_queryset(self):
        self.product = (self.request.GET.get("product") or "").strip()
        return self._filtered(_subscriptions(self.org)).order_by("product__sku", "start", "id")

    def get_paginator(self, queryset, per_page, **kwargs):
        paginator = super().get_paginator(queryset, per_page, **kwargs)
        # Count the subscriptions alone, not through the derived-pool join of the annotation.
        paginator.count = self._filtered(Subscription.objects.filter(org=self.org)).count()
        return paginator

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        now = timezone.now()
        for sub in context["subscriptions"]:
            _mark_expiry(sub, now)
        context["product"] = self.product
        context["products"] = Product.objects.filter(org=self.org).only("sku", "name").order_by("sku")
        return context


class SubscriptionExportView(OrgPageMixin, View):
    """The subscription list as CSV: the list's product filter applied, streamed, by id."""

    def get(self, request, *args, **kwargs):
        product = (request.GET.get("product") or "").strip()
        subs_qs = Subscription.objects.filter(org=self.org).order_by("pk")
        if product:
            subs_qs = subs_qs.filter(product__sku=product)
        rows = subs_qs.values_list("pk", "uuid", "product__sku", "product__name", "quantity",
                                   "start", "end", "contract_number", "account_number",
                                   "order_number")
        return csv_response(
            f"{self.org.key}-subscriptions.csv",
            ["uuid", "sku", "product", "quantity", "start", "end", "contract_number",
             "account_number", "order_number"],
            ([*row[1:4], "unlimited" if row[4] == -1 else row[4], row[5].isoformat(),
              row[6].isoformat(), *row[7:]] for row in batched(rows)))


class SubscriptionDetailView(OrgPageMixin, TemplateView):
    template_name = "subscriptions/subscription_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        sub = get_object_or_404(_subscriptions(self.org), uuid=kwargs["uuid"])
        _mark_expiry(sub, timezone.now())
        for pool in sub.primary_pools:
            _mark_utilisation(pool)
            consumers = (Entitlement.objects.filter(pool=pool).select_related("system")
                         .order_by("created", "id"))
            pool.consumer_list = list(consumers[:CONSUMERS_SHOWN])
            pool.consumer_count = consumers.count()  # by index; one query per primary pool
        # Thousands of hosts may hold a VDC subscription: one page of their pools, counted
        # without joining the entitlements, then the page's guest counts in one grouped query.
        derived = (Pool.objects.filter(subscription=sub, requires_host__isnull=False)
                   .select_related("requires_host", "product")
                   .order_by("requires_host__name", "id"))
        derived_page = _page(self.request, derived)
        counts = dict(Entitlement.objects.filter(pool__in=[p.pk for p in derived_page])
                      .values_list("pool_id").annotate(n=Count("id")).values_list("pool_id", "n"))
        for pool in derived_page:
            _mark_utilisation(pool)
            pool.consumer_count = counts.get(pool.pk, 0)
        context.update(subscription=sub, derived_page=derived_page, consumers_shown=CONSUMERS_SHOWN)
        return context


class SubscriptionCreateView(OrgPageMixin, BadFormIs400, FormView):
    admin_required = True
    template_name = "subscriptions/subscription_form.html"
    form_class = SubscriptionCreateForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "org": self.org}

    def form_valid(self, form):
        data = form.cleaned_data
        try:
            sub = services.create_subscription(
                self.org, data["product"].sku, data["quantity"], data["start"], data["end"],
                contract_number=data["contract_number"], trigger=UI_TRIGGER)
        except ValidationError as exc:
            form.add_service_error(exc)
            return self.form_invalid(form)
        messages.success(self.request, f"Subscription for {sub.product.sku} created.")
        return redirect("subscriptions:subscription_detail", org_key=self.org.key, uuid=sub.uuid)


class SubscriptionEditView(OrgPageMixin, BadFormIs400, FormView):
    admin_required = True
    template_name = "subscriptions/subscription_form.html"
    form_class = SubscriptionEditForm

    def dispatch(self, request, *args, **kwargs):
        self.uuid = kwargs["uuid"]
        return super().dispatch(request, *args, **kwargs)

    def get_subscription(self) -> Subscription:
        if not hasattr(self, "subscription"):
            self.subscription = _local(get_object_or_404(
                Subscription.objects.select_related("product"), org=self.org, uuid=self.uuid))
        return self.subscription

    def get_initial(self):
        sub = self.get_subscription()
        return {"quantity": sub.quantity, "start": timezone.localtime(sub.start),
                "end": timezone.localtime(sub.end)}

    def get_context_data(self, **kwargs):
        return super().get_context_data(subscription=self.get_subscription(), **kwargs)

    def form_valid(self, form):
        sub = self.get_subscription()
        data = form.cleaned_data
        # Untouched dates stay exact (the input shows whole seconds only).
        start = data["start"] if "start" in form.changed_data else None
        end = data["end"] if "end" in form.changed_data else None
        try:
            services.update_subscription(self.org, sub.uuid, data["quantity"], start, end,
                                         trigger=UI_TRIGGER)
        except ValidationError as exc:
            form.add_service_error(exc)
            return self.form_invalid(form)
        messages.success(self.request, "Subscription updated.")
        return redirect("subscriptions:subscription_detail", org_key=self.org.key, uuid=sub.uuid)


class SubscriptionDeleteView(OrgPageMixin, TemplateView):
    admin_required = True
    template_name = "subscriptions/subscription_confirm_delete.html"

    def get_subscription(self, uuid) -> Subscription:
        return _local(get_object_or_404(Subscription.objects.select_related("product"), org=self.org,
                                        uuid=uuid))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        sub = self.get_subscription(kwargs["uuid"])
        entitlements = Entitlement.objects.filter(pool__subscription=sub)
        context.update(
            subscription=sub,
            entitlement_count=entitlements.count(),
            system_count=entitlements.values("system_id").distinct().count(),
            derived_pool_count=Pool.objects.filter(subscription=sub, requires_host__isnull=False).count(),
        )
        return context

    def post(self, request, *args, **kwargs):
        sub = self.get_subscription(kwargs["uuid"])
        services.delete_subscription(self.org, sub.uuid, trigger=UI_TRIGGER)
        messages.success(request, f"Subscription for {sub.product.sku} deleted.")
        return redirect("subscriptions:subscription_list", org_key=self.org.key)


# --- Pools ------------------------------------------------------------------------------------

class PoolListView(OrgPageMixin, ListView):
    template_name = "subscriptions/pool_list.html"
    context_object_name = "pools"
    paginate_by = PAGE_SIZE

    def get_queryset(self):
        self.filter_form = PoolFilterForm(self.request.GET or None, org=self.org)
        queryset = (Pool.objects.filter(org=self.org)
                    .select_related("product", "subscription", "requires_host")
                    .order_by("product__sku", "type", "created", "id"))
        if self.filter_form.is_valid():
            if self.filter_form.cleaned_data["type"]:
                queryset = queryset.filter(type=self.filter_form.cleaned_data["type"])
            if self.filter_form.cleaned_data["product"]:
                queryset = queryset.filter(product__sku=self.filter_form.cleaned_data["product"])
        elif self.filter_form.is_bound:
            queryset = queryset.none()
        return queryset

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        for pool in context["pools"]:
            _mark_utilisation(pool)
        context["filter_form"] = self.filter_form
        context["filtered"] = any(self.request.GET.get(k) for k in ("type", "product"))
        return context


class PoolDetailView(OrgPageMixin, TemplateView):
    template_name = "subscriptions/pool_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        pool = get_object_or_404(services.org_pools(self.org).select_related("source_entitlement__system"),
                                 uuid=kwargs["uuid"])
        _mark_utilisation(pool)
        consumers = Entitlement.objects.filter(pool=pool).select_related("system").order_by("created", "id")
        context.update(pool=pool, consumers=_page(self.request, consumers))
        return context


# --- Products ---------------------------------------------------------------------------------

class ProductListView(OrgPageMixin, ListView):
    template_name = "subscriptions/product_list.html"
    context_object_name = "products"
    paginate_by = PAGE_SIZE

    def get_queryset(self):
        self.q = (self.request.GET.get("q") or "").strip()
        queryset = (queries.products().filter(org=self.org)
                    .annotate(subscription_count=Count("subscriptions", distinct=True))
                    .order_by("sku"))
        if self.q:
            queryset = queryset.filter(Q(sku__icontains=self.q) | Q(name__icontains=self.q))
        return queryset

    def get_context_data(self, **kwargs):
        return super().get_context_data(q=self.q, **kwargs)


# --- Bulk import ------------------------------------------------------------------------------

class ImportView(OrgPageMixin, BadFormIs400, FormView):
    admin_required = True
    sam_body_limit = importer.MAX_BODY  # the file streams to disk; fields keep Django's limit
    template_name = "subscriptions/import.html"
    form_class = ImportForm

    def form_valid(self, form):
        upload = form.cleaned_data["file"]
        dry_run = form.cleaned_data["dry_run"]
        context = {"form": form, "dry_run": dry_run}
        try:
            if upload.size > importer.MAX_BYTES:
                raise importer.InvalidImport("The file is larger than the import limit.")
            rows = importer.parse(upload.read(), upload.name, upload.content_type)
            context["result"] = importer.run(self.org, rows, dry_run=dry_run)
        except importer.InvalidImport as exc:
            context["error"] = exc
            return self.render_to_response(self.get_context_data(**context), status=400)
        if not dry_run:
            messages.success(self.request, "Import applied.")
        return self.render_to_response(self.get_context_data(**context))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["list_url"] = reverse("subscriptions:subscription_list", kwargs={"org_key": self.org.key})
        return context
