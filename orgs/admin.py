"""Operator admin for organizations and their roles (the shared building blocks: sam/admin.py).

The admin sits on top of the apps (architecture.md), so its actions may call any service.
``System``'s admin lives in ``hypervisors/admin.py``: it shows the guest-id mapping and deletes
through the mapping service. Tuned for big tables: ``list_select_related``, no full counts.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied

from orgs.models import (
    ActivationKey,
    ActivationKeyPool,
    DeletedSystem,
    Organization,
    OrganizationGroupPermission,
    OrganizationUserPermission,
    System,
    SystemEvent,
)
from orgs.services import KEY_RE, may_set_passwords, remove_member
from sam.admin import ReadOnlyAdminMixin, SamAdmin, UUIDSearchMixin, changelist_link
from subscriptions.services import heal_org


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
        revoked = []
        for org_id, username in pairs:
            # An operator's explicit action: the tokens the member created are revoked with it.
            revoked += [f"{orgs[org_id].key}/{t.name}"
                        for t in remove_member(orgs[org_id], username, confirm=True)]
        note = (f" Revoked {len(revoked)} API token(s) they created: {', '.join(revoked)}."
                if revoked else "")
        self.message_user(request, f"Removed {len(pairs)} membership(s).{note}", messages.SUCCESS)


@admin.register(OrganizationGroupPermission)
class OrganizationGroupPermissionAdmin(_OrgPermissionAdmin):
    list_display = ("content_object", "group", "codename")
    list_select_related = ("content_object", "group", "permission")
    search_fields = ("group__name", "content_object__key")


# --- Users: only a superuser sets another user's password or grants privileges ---------------

User = get_user_model()
PRIVILEGE_FIELDS = ("is_superuser", "is_staff", "groups", "user_permissions")


class SamUserAdmin(UserAdmin):
    """Django's user admin with the one password rule of ``orgs.services.may_set_passwords``:
    staff with ``change_user`` administer accounts but cannot set another user's password,
    grant themselves or others privileges, or edit a superuser (no takeover through /admin/)."""

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not may_set_passwords(request.user):
            fields += [f for f in PRIVILEGE_FIELDS if f not in fields]
        return fields

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not may_set_passwords(request.user):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not may_set_passwords(request.user):
            return False
        return super().has_delete_permission(request, obj)

    def user_change_password(self, request, id, form_url=""):
        target = self.get_object(request, unquote(id))
        if target is not None and target.pk != request.user.pk and not may_set_passwords(request.user):
            raise PermissionDenied("Only an operator (superuser) sets another user's password.")
        return super().user_change_password(request, id, form_url)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, SamUserAdmin)


# --- subscription-manager: activation keys, tombstones, system events -------------------------

class ActivationKeyPoolInline(admin.TabularInline):
    model = ActivationKeyPool
    extra = 0
    fields = ("pool_uuid", "quantity")


@admin.register(ActivationKey)
class ActivationKeyAdmin(UUIDSearchMixin, SamAdmin):
    """Keys register systems without credentials; name is unique per org (checked by the
    database constraint, shown as a form error)."""

    list_display = ("name", "org", "auto_attach", "release_ver", "service_level", "updated")
    list_select_related = ("org",)
    list_filter = ("auto_attach", "org")
    search_fields = ("name",)
    uuid_search_fields = ("uuid",)
    raw_id_fields = ("org",)
    readonly_fields = ("uuid", "created", "updated")
    fields = ("uuid", "org", "name", "description", "auto_attach", "service_level",
              "release_ver", "usage", "role", "created", "updated")
    inlines = (ActivationKeyPoolInline,)


@admin.register(DeletedSystem)
class DeletedSystemAdmin(ReadOnlyAdminMixin, UUIDSearchMixin, SamAdmin):
    """Tombstones: a deleted system's uuid answers 410 with ``deletedId``."""

    list_display = ("name", "uuid", "org", "deleted_by", "deleted")
    list_select_related = ("org",)
    list_filter = ("org",)
    search_fields = ("name",)
    uuid_search_fields = ("uuid",)


@admin.register(SystemEvent)
class SystemEventAdmin(ReadOnlyAdminMixin, SamAdmin):
    list_display = ("created", "kind", "system", "org", "message")
    list_select_related = ("system", "org")
    list_filter = ("kind", "org")
    raw_id_fields = ("system", "org")
