"""One filter definition per list, shared by the web UI and the REST API (issue 9 item 5).

The UI shows the fields in ``UI_FIELDS`` (``ui_filterset``); the API accepts them all. Every
domain word (hypervisor, guest, physical, covered, with a subscription) comes from
``orgs.models.SystemQuerySet``, so a dashboard count and the list it links to agree.
"""

from __future__ import annotations

import django_filters
from django.db.models import Q
from django.utils import timezone

from orgs.models import System

KINDS = [("physical", "physical"), ("guest", "guest"), ("hypervisor", "hypervisor"),
         ("system", "registered system (physical or guest)")]
COVERAGE = [("covered", "covered"), ("temporary", "temporarily covered"),
            ("uncovered", "not covered")]
SUBSCRIBED = [("yes", "with a subscription"), ("no", "without a subscription")]


class SystemFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", label="Search name",
                                  max_length=255)
    coverage = django_filters.ChoiceFilter(choices=COVERAGE, method="filter_coverage",
                                           label="Coverage", empty_label="any")
    type = django_filters.ChoiceFilter(choices=KINDS, method="filter_kind", label="Type",
                                       empty_label="any")
    is_guest = django_filters.BooleanFilter()
    name = django_filters.CharFilter(lookup_expr="icontains")
    hypervisor_id = django_filters.CharFilter(method="filter_lower")
    has_host = django_filters.BooleanFilter(field_name="current_host", lookup_expr="isnull",
                                            exclude=True, label="Has a known current host")

    UI_FIELDS = ("q", "coverage", "type")

    class Meta:
        model = System
        fields = ["q", "coverage", "type", "is_guest", "name", "hypervisor_id", "has_host"]

    def filter_kind(self, queryset, name, value):
        if value == "system":
            return queryset.filter(type=System.Type.SYSTEM)
        return queryset.of_kind(value)

    def filter_coverage(self, queryset, name, value):
        return queryset.of_coverage(value, timezone.now())

    def filter_lower(self, queryset, name, value):
        return queryset.filter(**{name: value.strip().lower()})


class HypervisorFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_search", label="Search name or hypervisor id",
                                  max_length=255)
    cluster = django_filters.CharFilter(method="filter_fact", label="Cluster", max_length=255)
    hypervisor_type = django_filters.CharFilter(method="filter_fact", label="Hypervisor type",
                                                max_length=64)
    reporter_id = django_filters.CharFilter(method="filter_reporter", label="Reporter",
                                            max_length=255)
    subscribed = django_filters.ChoiceFilter(choices=SUBSCRIBED, method="filter_subscribed",
                                             label="Subscription", empty_label="any")
    name = django_filters.CharFilter(lookup_expr="icontains")
    hypervisor_id = django_filters.CharFilter(method="filter_lower")

    UI_FIELDS = ("q", "cluster", "reporter_id", "hypervisor_type", "subscribed")
    FACTS = {"cluster": "hypervisor.cluster", "hypervisor_type": "hypervisor.type"}

    class Meta:
        model = System
        fields = ["q", "cluster", "hypervisor_type", "reporter_id", "subscribed", "name",
                  "hypervisor_id"]

    def filter_search(self, queryset, name, value):
        value = value.strip()
        return queryset.filter(Q(name__icontains=value) | Q(hypervisor_id__icontains=value.lower()))

    def filter_fact(self, queryset, name, value):
        return queryset.with_fact(self.FACTS[name], value.strip())

    def filter_reporter(self, queryset, name, value):
        return queryset.filter(reporter_id=value.strip())

    def filter_subscribed(self, queryset, name, value):
        now = timezone.now()
        return queryset.with_subscription(now) if value == "yes" else queryset.without_subscription(now)

    def filter_lower(self, queryset, name, value):
        return queryset.filter(**{name: value.strip().lower()})


def ui_filterset(filterset_class, data, queryset):
    """The list page's filter: the shared FilterSet showing only its ``UI_FIELDS``; a bad value
    is shown on the form and ignored (the API answers 400 instead)."""
    filterset = filterset_class(data or None, queryset=queryset)
    for name in list(filterset.form.fields):
        if name not in filterset_class.UI_FIELDS:
            del filterset.form.fields[name]
    filterset.form.order_fields(filterset_class.UI_FIELDS)
    return filterset
