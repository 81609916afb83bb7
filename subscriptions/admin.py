"""Operator admin for products, subscriptions, pools, entitlements and the entitlement log.

Pools and entitlements carry invariants (consumed counts, derived pools, event log), so the
admin never writes them: subscriptions are created, changed and deleted through the services,
and entitlements change through ``attach``/``remove_entitlement`` (API) or re-resolution.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from sam import inputs
from sam.admin import (
    ReadOnlyAdminMixin,
    ReadOnlyInline,
    SamAdmin,
    UUIDSearchMixin,
    changelist_link,
)
from subscriptions import services
from subscriptions.models import UNLIMITED, Entitlement, EntitlementEvent, Pool, Product, Subscription

SERVICE_MANAGED = ("Not editable here. Changes go through the services (attach / remove an "
                   "entitlement, re-resolve a system, change the subscription): they keep consumed "
                   "counts, derived pools and the event log consistent.")


def _quantity(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


def _label_with_org(product: Product) -> str:
    return f"{product.org.key} / {product}"


def _check_same_org(form: forms.ModelForm, org, names: tuple[str, ...]) -> None:
    if org is None:
        return
    for name in names:
        values = form.cleaned_data.get(name)
        values = values if hasattr(values, "__iter__") else [values]
        if any(p is not None and p.org_id != org.id for p in values):
            form.add_error(name, f"Products must belong to organization {org.key}.")


# --- Inlines ----------------------------------------------------------------------------------

class PoolInline(ReadOnlyInline):
    """Pools of a subscription: NORMAL, UNMAPPED_GUEST and one derived pool per entitled host."""

    model = Pool
    fields = ("type", "product", "quantity_display", "consumed", "requires_host", "start", "end")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product", "requires_host")

    @admin.display(description="Quantity")
    def quantity_display(self, obj: Pool) -> str:
        return _quantity(obj.quantity)


class PoolEntitlementInline(ReadOnlyInline):
    """Who consumes a pool."""

    model = Entitlement
    fk_name = "pool"
    fields = ("system", "quantity", "start", "end", "created")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("system")


# --- Products ---------------------------------------------------------------------------------

class ProductForm(forms.ModelForm):
    class Meta:
        model = Product
        fields = ("org", "sku", "name", "attributes", "provided_products", "derived_product")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        related = Product.objects.select_related("org")
        if self.instance.pk:  # on change the org is fixed: offer only its products
            related = related.filter(org_id=self.instance.org_id).exclude(pk=self.instance.pk)
        for name in ("provided_products", "derived_product"):
            if name in self.fields:
                self.fields[name].queryset = related
                self.fields[name].label_from_instance = _label_with_org

    def clean_attributes(self) -> dict:
        # The service's own check (virt_limit, plain values), so the form shows what it refuses.
        try:
            return services.clean_attributes(self.cleaned_data.get("attributes"))
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean(self):
        data = super().clean()
        _check_same_org(self, data.get("org") or getattr(self.instance, "org", None),
                        ("provided_products", "derived_product"))
        return data


@admin.register(Product)
class ProductAdmin(SamAdmin):
    """Saved through ``create_product`` (normalised attributes); changed attributes regenerate
    the pools built from the product (domain.md 3.6), as through the API and the import."""

    form = ProductForm
    list_display = ("sku", "name", "org", "virt_limit", "derived_product", "updated")
    list_select_related = ("org", "derived_product")
    list_filter = ("org",)
    search_fields = ("sku", "name")
    ordering = ("org__key", "sku")
    filter_horizontal = ("provided_products",)

    def get_readonly_fields(self, request, obj=None):
        # The sku is the Candlepin product id; create_product is idempotent by (org, sku).
        return ("org", "sku", "created", "updated") if obj else ("created", "updated")

    @admin.display(description="virt_limit")
    def virt_limit(self, obj: Product) -> str:
        return obj.attributes.get("virt_limit", "")

    def save_model(self, request, obj: Product, form, change: bool) -> None:
        derived = form.cleaned_data.get("derived_product")
        product = services.create_product(
            obj.org, obj.sku, obj.name, attributes=obj.attributes,
            provided=[p.sku for p in form.cleaned_data.get("provided_products", [])],
            derived=derived.sku if derived else None,
        )
        obj.pk = product.pk
        obj.refresh_from_db()


# --- Subscriptions ----------------------------------------------------------------------------

class SubscriptionForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ("org", "product", "derived_product", "quantity", "start", "end", "contract_number",
                  "account_number", "order_number")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("product", "derived_product"):
            if name in self.fields:
                self.fields[name].queryset = Product.objects.select_related("org")
                self.fields[name].label_from_instance = _label_with_org

    def clean_start(self):
        return self._in_range("start")

    def clean_end(self):
        return self._in_range("end")

    def _in_range(self, name: str):
        value = self.cleaned_data[name]
        if value is not None:
            inputs.validate_datetime_range(value)
        return value

    def clean_quantity(self) -> int:
        quantity = self.cleaned_data["quantity"]
        if quantity != UNLIMITED and not 1 <= quantity <= services.MAX_QUANTITY:
            raise forms.ValidationError(
                f"Between 1 and {services.MAX_QUANTITY}, or -1 for unlimited.")
        return quantity

    def clean(self):
        data = super().clean()
        org = data.get("org") or (self.instance.org if self.instance.pk else None)
        _check_same_org(self, org, ("product", "derived_product"))
        return data


@admin.register(Subscription)
class SubscriptionAdmin(UUIDSearchMixin, SamAdmin):
    """Created, changed and deleted through the services, so pools are made or regenerated and
    entitlements are revoked and logged. On change only quantity and dates are editable (what
    ``update_subscription`` accepts)."""

    form = SubscriptionForm
    list_display = ("product", "derived_product", "org", "quantity_display", "start", "end",
                    "contract_number")
    list_select_related = ("org", "product", "derived_product")
    list_filter = ("org", "end")
    search_fields = ("product__sku", "product__name", "contract_number", "account_number",
                     "order_number")
    uuid_search_fields = ("uuid",)
    date_hierarchy = "end"
    ordering = ("org__key", "product__sku", "start")
    inlines = (PoolInline,)
    fields = ("uuid", "org", "product", "derived_product", "quantity", "start", "end",
              "contract_number", "account_number", "order_number", "pools_link", "created", "updated")
    add_fields = ("org", "product", "derived_product", "quantity", "start", "end",
                  "contract_number", "account_number", "order_number")

    def get_fields(self, request, obj=None):
        return self.fields if obj else self.add_fields

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("uuid", "org", "product", "derived_product", "contract_number", "account_number",
                "order_number", "pools_link", "created", "updated")

    def get_inlines(self, request, obj):
        return self.inlines if obj else ()

    @admin.display(description="Quantity", ordering="quantity")
    def quantity_display(self, obj: Subscription) -> str:
        return _quantity(obj.quantity)

    @admin.display(description="All pools")
    def pools_link(self, obj: Subscription) -> str:
        return changelist_link(Pool, f"{obj.pools.count()} pool(s)", subscription__id__exact=obj.pk)

    def save_model(self, request, obj: Subscription, form, change: bool) -> None:
        if change:
            if not form.changed_data:  # nothing to regenerate, no systems to re-resolve
                return
            services.update_subscription(obj.org, obj.uuid, quantity=obj.quantity, start=obj.start,
                                         end=obj.end)
        else:
            obj.pk = services.create_subscription(
                obj.org, obj.product.sku, obj.quantity, obj.start, obj.end,
                derived=obj.derived_product.sku if obj.derived_product_id else None,
                contract_number=obj.contract_number, account_number=obj.account_number,
                order_number=obj.order_number,
            ).pk
        obj.refresh_from_db()

    def delete_model(self, request, obj: Subscription) -> None:
        services.delete_subscription(obj.org, obj.uuid)

    def delete_queryset(self, request, queryset) -> None:
        for subscription in queryset.select_related("org"):
            services.delete_subscription(subscription.org, subscription.uuid)

    def get_deleted_objects(self, objs, request):
        # Pools and entitlements have no delete permission in the admin; the service removes
        # them (revoking and logging), so they must not block the confirmation.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected


# --- Pools and entitlements (read-only) -------------------------------------------------------

@admin.register(Pool)
class PoolAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, SamAdmin):
    """Read-only: pools are made, resized and deleted by the subscription services and by
    entitling hosts (derived pools); see ``SERVICE_MANAGED``."""

    list_display = ("type", "product", "subscription", "org", "quantity_display", "consumed",
                    "requires_host", "start", "end")
    list_select_related = ("product", "subscription__product", "org", "requires_host")
    list_filter = ("type", "virt_only", "unmapped_guests_only", "org")
    search_fields = ("product__sku", "product__name", "requires_host__name")
    uuid_search_fields = ("uuid",)
    ordering = ("-id",)
    inlines = (PoolEntitlementInline,)
    readonly_fields = ("help", "entitlements_link")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related(
            "product", "subscription__product", "org", "requires_host")

    @admin.display(description="Quantity", ordering="quantity")
    def quantity_display(self, obj: Pool) -> str:
        return _quantity(obj.quantity)

    @admin.display(description="Editing")
    def help(self, obj) -> str:
        return SERVICE_MANAGED

    @admin.display(description="All entitlements")
    def entitlements_link(self, obj: Pool) -> str:
        return changelist_link(Entitlement, f"{obj.entitlements.count()} entitlement(s)",
                               pool__id__exact=obj.pk)


@admin.register(Entitlement)
class EntitlementAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, SamAdmin):
    """Read-only: entitlements change through ``attach``/``remove_entitlement`` and resolution
    (the "Re-resolve entitlements" action on systems); see ``SERVICE_MANAGED``."""

    list_display = ("system", "pool", "quantity", "start", "end", "org", "created")
    list_select_related = ("system", "pool__product", "org")
    list_filter = ("pool__type", "pool__unmapped_guests_only", "org")
    search_fields = ("system__name", "pool__product__sku")
    uuid_search_fields = ("uuid", "system__uuid", "pool__uuid")
    ordering = ("-id",)  # newest first, served by the primary key
    readonly_fields = ("help",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("system", "pool__product", "org")

    @admin.display(description="Editing")
    def help(self, obj) -> str:
        return SERVICE_MANAGED


@admin.register(EntitlementEvent)
class EntitlementEventAdmin(UUIDSearchMixin, ReadOnlyAdminMixin, SamAdmin):
    """The append-only log (domain.md 8): never added, changed or deleted by hand."""

    list_display = ("created", "action", "system_name", "product_sku", "pool_type", "quantity",
                    "reason", "trigger", "host_name", "org")
    list_select_related = ("org",)
    # No filters on reason/trigger: a DISTINCT over the whole log on every page; search them.
    list_filter = ("action", "org")
    search_fields = ("system_name", "product_sku", "host_name", "=reason", "=trigger")
    uuid_search_fields = ("system_uuid", "entitlement_uuid", "pool_uuid")
    date_hierarchy = "created"
    ordering = ("-created", "-id")  # newest first (index on created)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("org")

