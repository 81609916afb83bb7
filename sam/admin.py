"""The building blocks every app's operator admin shares (architecture.md habit 13: tuned for
big tables, read-only views of derived rows). Here, below the apps' admins, so no app's admin
imports another's."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.db.models import Q
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html

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
