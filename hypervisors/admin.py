"""Operator admin for systems and the host→guest mapping (guest-id rows, host timeline).

``System`` is registered here, not in ``orgs``: its page shows the mapping and coverage, and it
is deleted through ``hypervisors.services.delete_system``. Guest-id rows and intervals are
written by the ingest only (they drive ``current_host``), so the admin shows them read-only.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html, format_html_join

from hypervisors import services
from hypervisors.models import GuestHostInterval, GuestId, Report
from orgs.models import ConsumerIdentity, System, SystemEvent
from sam.admin import ReadOnlyAdminMixin, ReadOnlyInline, SamAdmin, UUIDSearchMixin, changelist_link
from subscriptions.explain import explain
from subscriptions.models import Entitlement
from subscriptions.services import compliance_for, enqueue_resolution


class GuestIdInline(ReadOnlyInline):
    """Guests reported by this system (when it is a hypervisor)."""

    model = GuestId
    fk_name = "host"
    fields = ("guest_uuid", "attributes", "updated", "created")


class SystemEntitlementInline(ReadOnlyInline):
    """What a system consumes (shown on the System page)."""

    model = Entitlement
    fk_name = "system"
    fields = ("pool", "subscription", "quantity", "start", "end", "created")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related(
            "pool__product", "pool__subscription__product")

    @admin.display(description="Subscription")
    def subscription(self, obj: Entitlement) -> str:
        return str(obj.pool.subscription)


@admin.register(System)
class SystemAdmin(UUIDSearchMixin, SamAdmin):
    """Only name and autoheal are editable, through ``update_system``; systems are added by
    registration or virt-who reports, and deleted through ``delete_system`` (entitlements revoked
    and logged, derived pools gone, guests re-resolved)."""

    list_display = ("name", "type", "is_guest", "org", "current_host", "autoheal", "last_checkin",
                    "registered_at")
    list_select_related = ("org", "current_host")
    list_filter = ("type", "is_guest", "autoheal", ("host_unknown_since", admin.EmptyFieldListFilter),
                   "org")
    search_fields = ("name", "=hypervisor_id", "=reporter_id")
    uuid_search_fields = ("uuid", "virt_uuid", "virt_uuid_swapped", "dmi_uuid", "hypervisor_id")
    ordering = ("name", "id")
    actions = ("re_resolve",)
    inlines = (SystemEntitlementInline, GuestIdInline)
    fieldsets = (
        (None, {"fields": ("uuid", "org", "name", "type", "autoheal")}),
        ("Coverage", {"fields": ("compliance", "coverage", "entitlements_link")}),
        ("Host and guests", {"fields": (
            "is_guest", "current_host", "host_unknown_since", "guests_link", "reported_guests_link",
            "virt_uuid", "virt_uuid_swapped", "dmi_uuid", "hypervisor_id", "reporter_id")}),
        ("Registration", {"fields": ("registered_at", "last_checkin", "identity_summary",
                                     "events_summary", "updated",
                                     "installed_products", "facts")}),
    )
    readonly_fields = (
        "uuid", "org", "type", "compliance", "coverage", "entitlements_link", "is_guest",
        "current_host", "host_unknown_since", "guests_link", "reported_guests_link", "virt_uuid",
        "virt_uuid_swapped", "dmi_uuid", "hypervisor_id", "reporter_id", "registered_at",
        "last_checkin", "identity_summary", "events_summary", "updated", "installed_products",
        "facts",
    )

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("org", "current_host")

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="subscription-manager identity")
    def identity_summary(self, obj: System) -> str:
        identity = ConsumerIdentity.objects.filter(system=obj).first()
        if identity is None:
            return "— (registered through the API or virt-who)"
        return format_html("{} by {}; certificate serial {} valid until {:%Y-%m-%d}",
                           identity.get_registered_via_display(), identity.registered_by or "?",
                           identity.serial, identity.not_after)

    @admin.display(description="Events (possible clones, unusable key pools)")
    def events_summary(self, obj: System) -> str:
        events = list(SystemEvent.objects.filter(system=obj)[:10])
        if not events:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} <code>{}</code> {}</li>",
            ((f"{e.created:%Y-%m-%d %H:%M}", e.kind, e.message) for e in events)))

    @admin.display(description="Compliance")
    def compliance(self, obj: System) -> str:
        status = compliance_for(obj)
        if not status.reasons:
            return format_html("<strong>{}</strong>", status.status)
        return format_html("<strong>{}</strong><ul>{}</ul>", status.status, format_html_join(
            "", "<li>{}: {}</li>", ((r["key"], r["message"]) for r in status.reasons)))

    @admin.display(description="Coverage per installed product")
    def coverage(self, obj: System) -> str:
        """``explain()``: the chain that covers each product, or the first failing link."""
        items = [format_html(
            "<li><strong>{} {}</strong>: {} — {}{}<br><small>{}</small>{}</li>",
            e.product_id, e.product_name, e.status, e.message,
            f" [{e.reason}]" if e.reason else "",
            " → ".join(f"{link.kind.replace('_', ' ')} {link.label}" for link in e.chain),
            format_html("<br><em>{}</em>", e.action) if e.action else "",
        ) for e in explain(obj)]
        if not items:
            return "No installed products."
        return format_html("<ul>{}</ul>", format_html_join("", "{}", ((item,) for item in items)))

    @admin.display(description="All entitlements")
    def entitlements_link(self, obj: System) -> str:
        return changelist_link(Entitlement, "Entitlements of this system", system__id__exact=obj.pk)

    @admin.display(description="Registered guests on this host")
    def guests_link(self, obj: System) -> str:
        return changelist_link(System, f"{obj.current_guests.count()} guest(s)",
                               current_host__id__exact=obj.pk)

    @admin.display(description="Guest ids reported by this host")
    def reported_guests_link(self, obj: System) -> str:
        return changelist_link(GuestId, f"{obj.guest_ids.count()} guest id(s)", host__id__exact=obj.pk)

    @admin.action(description="Re-resolve entitlements", permissions=["change"])
    def re_resolve(self, request, queryset) -> None:
        ids = list(queryset.values_list("id", flat=True))
        with transaction.atomic():  # resolution is enqueued on commit
            enqueue_resolution(ids, "manual")
        self.message_user(request, f"Re-resolution queued for {len(ids)} system(s).", messages.SUCCESS)

    def save_model(self, request, obj: System, form, change: bool) -> None:
        changes = {name: getattr(obj, name) for name in form.changed_data if name in ("name", "autoheal")}
        if changes:
            services.update_system(obj.org, obj.uuid, **changes)
        obj.refresh_from_db()

    def delete_model(self, request, obj: System) -> None:
        services.delete_system(obj.org, obj.uuid, deleted_by=request.user.get_username())

    def delete_queryset(self, request, queryset) -> None:
        for system in queryset.select_related("org"):
            services.delete_system(system.org, system.uuid, deleted_by=request.user.get_username())

    def get_deleted_objects(self, objs, request):
        # Entitlements, derived pools and guest-id rows are read-only in the admin; the service
        # removes them (revoking and logging), so they must not block the confirmation.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected


@admin.register(GuestId)
class GuestIdAdmin(ReadOnlyAdminMixin, SamAdmin):
    list_display = ("guest_uuid", "host", "org", "updated", "created")
    list_select_related = ("host", "org")
    list_filter = ("org",)
    search_fields = ("=guest_uuid", "host__name", "=host__hypervisor_id")
    ordering = ("-id",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host", "org")


@admin.register(GuestHostInterval)
class GuestHostIntervalAdmin(ReadOnlyAdminMixin, SamAdmin):
    """The host timeline of each guest UUID: "where did VM X run on 1 March?"."""

    list_display = ("guest_uuid", "host_name", "started", "ended", "source", "org")
    list_select_related = ("org",)  # host_name is a copy: no join on the host
    list_filter = ("org", ("ended", admin.EmptyFieldListFilter))
    search_fields = ("=guest_uuid", "host_name", "=host_hypervisor_id", "=source")
    date_hierarchy = "started"
    ordering = ("-started", "-id")


@admin.register(Report)
class ReportAdmin(ReadOnlyAdminMixin, UUIDSearchMixin, SamAdmin):
    """virt-who check-in jobs with their result and diff; created by the API, never here."""

    list_display = ("uuid", "org", "kind", "state", "reporter_id", "hypervisor_count", "created",
                    "finished")
    list_select_related = ("org",)
    list_filter = ("state", "kind", "org")
    search_fields = ("=reporter_id", "=principal")
    uuid_search_fields = ("uuid",)
    date_hierarchy = "created"
    ordering = ("-created", "-id")
    exclude = ("payload",)
    readonly_fields = ("payload_summary",)

    @admin.display(description="payload")
    def payload_summary(self, obj: Report) -> str:
        return f"{obj.payload_size} bytes, sha256 {obj.payload_hash}" if obj.payload_hash else "-"
