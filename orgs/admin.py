"""Operator admin for organizations and their roles, plus the shared admin building blocks.

The admin sits on top of the apps (architecture.md), so its actions may call any service.
``System``'s admin lives in ``hypervisors/admin.py``: it shows the guest-id mapping and deletes
through the mapping service. Tuned for big tables: ``list_select_related``, no full counts.
"""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html

from orgs.models import Organization, OrganizationGroupPermission, OrganizationUserPermission, System
from orgs.services import KEY_RE, remove_member
from subscriptions.services import heal_org

INLINE_LIMIT = 100


class SamAdmin(admin.ModelAdmin):
    """Defaults for every sam admin: no COUNT(*) over the whole table on each changelist."""

    show_full_result_count = False


class ReadOnlyAdminMixin:
    """Rows kept by the services (derived state, history): the admin only shows them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class UUIDSearchMixin:
    """A search term that is a UUID matches ``uuid_search_fields`` exactly (their indexes),
    instead of a LIKE scan over the text fields."""

    uuid_search_fields: tuple[str, ...] = ()

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if self.uuid_search_fields and term:
            try:
                uuid.UUID(term)
            except ValueError:
                pass
            else:
                query = Q()
                for name in self.uuid_search_fields:
                    query |= Q(**{name: term.lower()})
                return queryset.filter(query), False
        return super().get_search_results(request, queryset, search_term)


class CappedInlineFormSet(BaseInlineFormSet):
    """Inlines are not paginated: show the first ``INLINE_LIMIT`` rows, the parent links to all."""

    def get_queryset(self):
        qs = super().get_queryset()
        if not qs.query.is_sliced:
            self._queryset = qs = qs[:INLINE_LIMIT]
        return qs


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    """A view of related rows with a link to each; nothing is added, changed or deleted here."""

    formset = CappedInlineFormSet
    extra = 0
    can_delete = False
    show_change_link = True

    def get_readonly_fields(self, request, obj=None):
        return self.fields


def changelist_link(model, label: str, **filters) -> str:
    """Link to ``model``'s changelist filtered by ``filters`` (e.g. every entitlement of a pool)."""
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return format_html('<a href="{}?{}">{}</a>', url, query, label)


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ("key", "name", "content_access_mode", "autobind_enabled", "hypervisor_autobind_enabled",
                  "unmapped_window", "unmapped_lifetime")

    def clean_key(self) -> str:
        key = self.cleaned_data["key"].strip()
        if not KEY_RE.match(key):
            raise forms.ValidationError("Use letters, digits, '-' and '_', starting with a letter or digit.")
        return key

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Name must not be empty.")
        return name


@admin.register(Organization)
class OrganizationAdmin(SamAdmin):
    """Settings are plain fields validated by the model (CHECK constraints, choices).

    No delete: nothing revokes and logs a whole org, and products are PROTECTed by subscriptions.
    """

    form = OrganizationForm
    list_display = ("key", "name", "content_access_mode", "autobind_enabled",
                    "hypervisor_autobind_enabled", "created")
    list_filter = ("content_access_mode", "autobind_enabled", "hypervisor_autobind_enabled")
    search_fields = ("key", "name")
    ordering = ("key",)
    actions = ("heal_all_systems",)
    fieldsets = (
        (None, {"fields": ("key", "name", "content_access_mode")}),
        ("Auto-attach", {
            "fields": ("autobind_enabled", "hypervisor_autobind_enabled", "unmapped_window",
                       "unmapped_lifetime"),
            "description": "Changing these does not re-resolve anything by itself: "
                           "use the “Heal all systems” action afterwards.",
        }),
        ("Record", {"fields": ("systems_link", "created", "updated")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # The key is the org's permanent address (Candlepin owner key, API paths).
        fields = ("systems_link", "created", "updated")
        return ("key", *fields) if obj else fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Systems")
    def systems_link(self, obj: Organization) -> str:
        if obj.pk is None:
            return "-"
        return changelist_link(System, "Systems of this organization", org__id__exact=obj.pk)

    @admin.action(description="Heal all systems", permissions=["change"])
    def heal_all_systems(self, request, queryset) -> None:
        total = sum(heal_org(org) for org in queryset)
        self.message_user(request, f"Resolution queued for {total} system(s) in "
                                   f"{queryset.count()} organization(s).", messages.SUCCESS)


class _OrgPermissionAdmin(ReadOnlyAdminMixin, SamAdmin):
    """Roles are sets of guardian permissions: change them with ``orgs.services.set_member_role``
    so a member always holds exactly one role."""

    list_filter = ("permission__codename", "content_object")
    ordering = ("content_object__key", "id")

    @admin.display(description="Permission", ordering="permission__codename")
    def codename(self, obj) -> str:
        return obj.permission.codename


@admin.register(OrganizationUserPermission)
class OrganizationUserPermissionAdmin(_OrgPermissionAdmin):
    list_display = ("content_object", "user", "codename")
    list_select_related = ("content_object", "user", "permission")
    search_fields = ("user__username", "content_object__key")
    actions = ("remove_members",)

    def has_remove_permission(self, request) -> bool:
        return request.user.has_perm("orgs.delete_organizationuserpermission")

    @admin.action(description="Remove these members from their organization (every role permission)",
                  permissions=["remove"])
    def remove_members(self, request, queryset) -> None:
        pairs = set(queryset.values_list("content_object_id", "user__username"))
        orgs = Organization.objects.in_bulk({org_id for org_id, _ in pairs})
        for org_id, username in pairs:
            remove_member(orgs[org_id], username)
        self.message_user(request, f"Removed {len(pairs)} membership(s).", messages.SUCCESS)


@admin.register(OrganizationGroupPermission)
class OrganizationGroupPermissionAdmin(_OrgPermissionAdmin):
    list_display = ("content_object", "group", "codename")
    list_select_related = ("content_object", "group", "permission")
    search_fields = ("group__name", "content_object__key")
