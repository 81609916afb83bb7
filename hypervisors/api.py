"""REST API v1: systems (with compliance, explanation, entitlements, host timeline),
hypervisors (with their reported guests and history) and reports (check-in jobs).

List endpoints run a constant number of queries: hosts are joined, guest counts are
subqueries, and the registered system behind each reported guest is found with one query per
page.
"""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from hypervisors import services
from hypervisors.filters import HypervisorFilter, SystemFilter
from hypervisors.models import REPORT_BLOBS, GuestHostInterval, GuestId, Report
from hypervisors.queries import DETAIL_GUESTS, HISTORY_LENGTH, attach_registered, guests_of, per_host_count
from orgs import content_access
from orgs.models import System
from sam.api.base import OrgScopedViewSet, UuidLookupMixin, check_if_match, etag, org_path
from sam.api.pagination import IdCursor
from subscriptions.explain import explain
from subscriptions.models import Entitlement, EntitlementCertificate
from subscriptions.services import compliance_for

# --- Serializers ------------------------------------------------------------------------------


class SystemRefSerializer(serializers.Serializer):
    uuid = serializers.UUIDField(read_only=True)
    name = serializers.CharField(read_only=True)


class SystemSerializer(serializers.ModelSerializer):
    host = SystemRefSerializer(source="current_host", read_only=True, allow_null=True)

    class Meta:
        model = System
        fields = ["uuid", "name", "type", "is_guest", "hypervisor_id", "host", "host_unknown_since",
                  "last_checkin", "registered_at"]
        read_only_fields = fields


class CertificateBriefSerializer(serializers.ModelSerializer):
    """The entitlement certificate a registered system downloads (subscription-manager)."""

    class Meta:
        model = EntitlementCertificate
        fields = ["serial", "start", "end", "issued"]
        read_only_fields = fields


class EntitlementRowSerializer(serializers.ModelSerializer):
    pool = serializers.UUIDField(source="pool.uuid", read_only=True)
    pool_type = serializers.CharField(source="pool.type", read_only=True)
    product = serializers.CharField(source="pool.product.sku", read_only=True)
    certificate = CertificateBriefSerializer(read_only=True, allow_null=True,
                                             help_text="null for systems without an identity "
                                                       "(virt-who hypervisors, API registrations)")

    class Meta:
        model = Entitlement
        fields = ["uuid", "pool", "pool_type", "product", "quantity", "start", "end", "certificate"]
        read_only_fields = fields


class ComplianceSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["valid", "partial", "invalid", "disabled"])
    reasons = serializers.ListField(child=serializers.DictField())
    products = serializers.DictField(child=serializers.CharField(),
                                     help_text="installed product id → valid/partial/invalid")


class LinkSerializer(serializers.Serializer):
    kind = serializers.CharField()
    label = serializers.CharField()
    id = serializers.CharField(allow_null=True)


class ExplanationSerializer(serializers.Serializer):
    product_id = serializers.CharField()
    product_name = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField(allow_null=True)
    message = serializers.CharField()
    action = serializers.CharField()
    chain = LinkSerializer(many=True)


class IntervalSerializer(serializers.ModelSerializer):
    host = serializers.UUIDField(source="host.uuid", read_only=True, allow_null=True)
    report = serializers.UUIDField(source="report.uuid", read_only=True, allow_null=True)

    class Meta:
        model = GuestHostInterval
        fields = ["guest_uuid", "host", "host_name", "host_hypervisor_id", "started", "ended",
                  "report"]
        read_only_fields = fields


class SystemDetailSerializer(SystemSerializer):
    content_access = serializers.SerializerMethodField(
        help_text="What subscription-manager is shown: entitlement or sca (orgs.content_access); "
                  "coverage is accounted either way")
    compliance = ComplianceSerializer(source="api_compliance", read_only=True)
    explanation = ExplanationSerializer(source="api_explanation", many=True, read_only=True)
    entitlements = EntitlementRowSerializer(source="api_entitlements", many=True, read_only=True)
    host_timeline = IntervalSerializer(source="api_timeline", many=True, read_only=True)

    class Meta(SystemSerializer.Meta):
        fields = [*SystemSerializer.Meta.fields, "facts", "installed_products", "autoheal",
                  "virt_uuid", "reporter_id", "updated", "content_access", "client_version",
                  "compliance", "explanation", "entitlements", "host_timeline"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=["entitlement", "sca"]))
    def get_content_access(self, system: System) -> str:
        return content_access.presented(system)


class SystemWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=255)
    facts = serializers.DictField(required=False, help_text="fact name → value (plain values)")
    installed_products = serializers.ListField(
        child=serializers.DictField(), required=False,
        help_text='[{"productId": "479", "productName": "..."}]')
    type = serializers.ChoiceField(choices=System.Type.choices, default=System.Type.SYSTEM)


class SystemChangeSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=255, required=False)
    facts = serializers.DictField(required=False)
    installed_products = serializers.ListField(child=serializers.DictField(), required=False)
    autoheal = serializers.BooleanField(required=False)


class HypervisorSerializer(serializers.ModelSerializer):
    cluster = serializers.SerializerMethodField()
    hypervisor_type = serializers.SerializerMethodField()
    guest_count = serializers.IntegerField(read_only=True, help_text="Guest UUIDs it reports.")
    registered_guest_count = serializers.IntegerField(
        read_only=True, help_text="Registered guests whose current host it is.")

    class Meta:
        model = System
        fields = ["uuid", "name", "hypervisor_id", "reporter_id", "cluster", "hypervisor_type",
                  "guest_count", "registered_guest_count", "last_checkin", "registered_at"]
        read_only_fields = fields

    def get_cluster(self, obj) -> str | None:
        return obj.facts.get("hypervisor.cluster")

    def get_hypervisor_type(self, obj) -> str | None:
        return obj.facts.get("hypervisor.type")


class GuestSerializer(serializers.ModelSerializer):
    guest_uuid = serializers.CharField(read_only=True)
    conflict = serializers.BooleanField(read_only=True,
                                        help_text="Another host reports this guest UUID too.")
    system = SystemRefSerializer(source="registered", read_only=True, allow_null=True,
                                 help_text="The registered system with this virt.uuid, if any.")

    class Meta:
        model = GuestId
        fields = ["guest_uuid", "attributes", "created", "updated", "conflict", "system"]
        read_only_fields = fields


class ReportSerializer(serializers.ModelSerializer):
    superseded_by = serializers.UUIDField(source="superseded_by.uuid", read_only=True,
                                          allow_null=True)

    class Meta:
        model = Report
        fields = ["uuid", "kind", "state", "reporter_id", "principal", "hypervisor_count",
                  "guest_count", "created", "started", "finished", "superseded_by"]
        read_only_fields = fields


class ReportDetailSerializer(ReportSerializer):
    error = serializers.CharField(source="client_error", read_only=True,
                                  help_text="Why the job failed, with a log reference.")

    class Meta(ReportSerializer.Meta):
        fields = [*ReportSerializer.Meta.fields, "origin", "payload_hash", "payload_size",
                  "create_missing", "attempts", "error", "result", "diff"]
        read_only_fields = fields


class HypervisorDetailSerializer(HypervisorSerializer):
    entitlements = EntitlementRowSerializer(source="api_entitlements", many=True, read_only=True)
    guests = GuestSerializer(source="api_guests", many=True, read_only=True,
                             help_text=f"The first {DETAIL_GUESTS}; all of them under guests/.")
    history = ReportSerializer(source="api_history", many=True, read_only=True,
                               help_text=f"The last {HISTORY_LENGTH} reports that touched it.")

    class Meta(HypervisorSerializer.Meta):
        fields = [*HypervisorSerializer.Meta.fields, "facts", "autoheal", "entitlements", "guests",
                  "history"]
        read_only_fields = fields


# --- Helpers ----------------------------------------------------------------------------------

def entitlement_rows(system: System):
    return (Entitlement.objects.filter(system=system).select_related("pool__product", "certificate")
            .order_by("created", "id"))


# --- Systems ----------------------------------------------------------------------------------

@org_path
class SystemViewSet(UuidLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """Registered machines. Detail: compliance, explanation, entitlements, host timeline."""

    queryset = System.objects.select_related("current_host")
    serializer_class = SystemSerializer
    pagination_class = IdCursor
    filterset_class = SystemFilter
    ordering_fields = ["id", "name", "registered_at"]
    ordering = ["id"]

    def get_serializer_class(self):
        return SystemSerializer if self.action == "list" else SystemDetailSerializer

    def _detail(self, system: System, code: int = 200) -> Response:
        system = System.objects.select_related("org", "current_host").get(pk=system.pk)
        result = compliance_for(system)
        system.api_compliance = {"status": result.status, "reasons": result.reasons,
                                 "products": {k: v.status for k, v in result.products.items()}}
        system.api_explanation = [item.as_dict() for item in explain(system)]
        system.api_entitlements = entitlement_rows(system)
        uuids = [u for u in (system.virt_uuid, system.virt_uuid_swapped) if u]
        system.api_timeline = (GuestHostInterval.objects.filter(org=self.org, guest_uuid__in=uuids)
                               .select_related("host", "report").order_by("started", "id"))
        return Response(SystemDetailSerializer(system).data, status=code,
                        headers={"ETag": etag(system)})

    def retrieve(self, request, *args, **kwargs):
        return self._detail(self.get_object())

    @extend_schema(request=SystemWriteSerializer, responses={201: SystemDetailSerializer})
    def create(self, request, *args, **kwargs):
        serializer = SystemWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        system = services.register_system(self.org, **serializer.validated_data, trigger="api")
        return self._detail(system, status.HTTP_201_CREATED)

    @extend_schema(request=SystemChangeSerializer, responses=SystemDetailSerializer)
    def partial_update(self, request, *args, **kwargs):
        system = self.get_object()
        check_if_match(request, system)
        serializer = SystemChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        system = services.update_system(self.org, system.uuid, **serializer.validated_data,
                                        trigger="api")
        return self._detail(system)

    def destroy(self, request, *args, **kwargs):
        services.delete_system(self.org, self.get_object().uuid, trigger="api")
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Hypervisors ------------------------------------------------------------------------------

@org_path
class HypervisorViewSet(UuidLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        OrgScopedViewSet):
    """Hypervisors (systems virt-who reported): reported guests (registered or not), reporter,
    history."""

    queryset = System.objects.hypervisors()
    serializer_class = HypervisorSerializer
    filterset_class = HypervisorFilter
    ordering_fields = ["id", "name", "hypervisor_id", "last_checkin", "guest_count"]
    ordering = ["name", "id"]

    def get_queryset(self):
        return super().get_queryset().annotate(
            guest_count=per_host_count(GuestId.objects.all(), "host"),
            registered_guest_count=per_host_count(System.objects.all(), "current_host"),
        )

    def get_serializer_class(self):
        if self.action == "retrieve":
            return HypervisorDetailSerializer
        return GuestSerializer if self.action == "guests" else HypervisorSerializer

    def retrieve(self, request, *args, **kwargs):
        host = self.get_object()
        host.api_entitlements = entitlement_rows(host)
        host.api_guests = attach_registered(self.org, list(guests_of(host)[:DETAIL_GUESTS]))
        host.api_history = (Report.objects.touching(host)
            .select_related("superseded_by").defer(*REPORT_BLOBS)
            .order_by("-created", "-id")
            [:HISTORY_LENGTH])
        return Response(HypervisorDetailSerializer(host).data)

    @extend_schema(responses=GuestSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=IdCursor, filter_backends=[])
    def guests(self, request, *args, **kwargs):
        """Every guest UUID the hypervisor reports, cursor-paginated."""
        host = self.get_object()
        page = self.paginate_queryset(guests_of(host))
        return self.get_paginated_response(
            GuestSerializer(attach_registered(self.org, page), many=True).data)


# --- Reports ----------------------------------------------------------------------------------

class ReportFilter(django_filters.FilterSet):
    class Meta:
        model = Report
        fields = ["state", "kind", "reporter_id"]


@org_path
class ReportViewSet(UuidLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                    OrgScopedViewSet):
    """Check-in jobs (virt-who uploads) with their result and diff; never the raw payload."""

    queryset = Report.objects.select_related("superseded_by").defer(*REPORT_BLOBS)
    serializer_class = ReportSerializer
    filterset_class = ReportFilter
    ordering_fields = ["id", "created", "finished"]
    ordering = ["-created", "-id"]

    def get_serializer_class(self):
        return ReportDetailSerializer if self.action == "retrieve" else ReportSerializer


ROUTES = [
    (r"orgs/(?P<org_key>[^/]+)/systems", SystemViewSet, "org-system"),
    (r"orgs/(?P<org_key>[^/]+)/hypervisors", HypervisorViewSet, "org-hypervisor"),
    (r"orgs/(?P<org_key>[^/]+)/reports", ReportViewSet, "org-report"),
]
