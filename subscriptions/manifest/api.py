"""REST API v1: the org's Red Hat manifest (``/api/v1/orgs/{key}/manifest/``).

``GET`` the status (distributor, expiry, subscriptions, last import), ``POST`` a manifest
(multipart ``file``, repeatable ``force``), ``DELETE`` it; ``history/`` lists every import and
delete. Viewers read, admins write (``OrgScopedMixin``); the import itself is
``subscriptions.manifest.importer``.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, parsers, serializers
from rest_framework.response import Response

from sam.api.base import OrgScopedMixin, org_path
from subscriptions.manifest import http, importer, status
from subscriptions.manifest.reader import InvalidManifest
from subscriptions.models import ManifestImport, Subscription, UpstreamDistributor

FORCE_NAMES = importer.CONFLICT_KEYS


class ConflictSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=FORCE_NAMES)
    message = serializers.CharField()
    forced = serializers.BooleanField()


class ManifestImportSerializer(serializers.ModelSerializer):
    """One entry of the import history (Candlepin's ImportRecord)."""

    conflicts = ConflictSerializer(many=True, read_only=True)
    forced = serializers.ListField(child=serializers.CharField(), read_only=True)
    upstream = serializers.DictField(allow_null=True, read_only=True,
                                     help_text="The distributor as imported (or deleted).")
    counts = serializers.DictField(child=serializers.IntegerField(), read_only=True,
                                   help_text="entitlements, active, ended, created, updated, unchanged, "
                                             "removed, products, revoked.")

    class Meta:
        model = ManifestImport
        fields = ["uuid", "kind", "state", "status", "message", "conflicts", "forced", "signature", "signer",
                  "file_name", "file_sha256", "file_size", "generated_by", "generated_date", "upstream",
                  "counts", "principal", "created", "finished"]


class DistributorSerializer(serializers.ModelSerializer):
    class Meta:
        model = UpstreamDistributor
        fields = ["uuid", "name", "type", "owner_key", "content_access_mode", "url_web", "url_api",
                  "id_cert_serial", "id_cert_expires", "manifest_created", "manifest_version", "imported"]


class ManifestSubscriptionSerializer(serializers.ModelSerializer):
    product = serializers.CharField(source="product.sku")
    product_name = serializers.CharField(source="product.name")

    class Meta:
        model = Subscription
        fields = ["uuid", "product", "product_name", "quantity", "start", "end", "contract_number",
                  "upstream_pool_id", "upstream_entitlement_id"]


class ManifestStatusSerializer(serializers.Serializer):
    imported = serializers.BooleanField()
    distributor = DistributorSerializer(allow_null=True)
    expires = serializers.DateTimeField(source="manifest_expiry.when", allow_null=True,
                                        help_text="The manifest's expiry: its identity certificate's.")
    expired = serializers.BooleanField(source="manifest_expiry.expired")
    subscriptions = ManifestSubscriptionSerializer(many=True, help_text="Soonest end first (50 at most).")
    last_import = ManifestImportSerializer(allow_null=True)


class ManifestUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The manifest zip exported from the Red Hat Customer Portal.")
    force = serializers.ListField(child=serializers.ChoiceField(choices=FORCE_NAMES), required=False,
                                  help_text="Conflicts to override (repeat the field).")


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    conflicts = ConflictSerializer(many=True, required=False)
    record = ManifestImportSerializer(required=False, help_text="The FAILURE entry of the history.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


FORCE = OpenApiParameter("force", OpenApiTypes.STR, many=True, enum=FORCE_NAMES, required=False,
                         description="Conflicts to override; may also be sent as multipart fields.")
ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Not a readable manifest, or an unknown force name; "
                                                      "nothing stored."),
    409: OpenApiResponse(ErrorSerializer, description="Conflicts not forced (`conflicts`), or the "
                                                      "distributor belongs to another org; recorded."),
    413: OpenApiResponse(ErrorSerializer, description="Larger than SAM_MANIFEST_MAX_BYTES."),
}


def _error(code: str, message: str, status_code: int, record: ManifestImport | None = None) -> Response:
    body = {"code": code, "message": message}
    if record is not None:
        body["conflicts"] = record.conflicts
        body["record"] = ManifestImportSerializer(record).data
    return Response({"error": body}, status=status_code)


def principal(request) -> str:
    return request.user.get_username() if request.user.is_authenticated else ""


@org_path
class ManifestView(OrgScopedMixin, generics.GenericAPIView):
    """The org's manifest: status, import, delete."""

    parser_classes = [parsers.MultiPartParser]
    sam_body_limit = staticmethod(http.max_request_bytes)  # beyond Django's 2.5 MB
    serializer_class = ManifestStatusSerializer
    queryset = UpstreamDistributor.objects.all()
    pagination_class = None
    filter_backends: list = []

    @extend_schema(summary="The manifest's status", responses={200: ManifestStatusSerializer})
    def get(self, request, *args, **kwargs):
        return Response(ManifestStatusSerializer(status.manifest_status(self.org)).data)

    @extend_schema(
        summary="Import a Red Hat subscription manifest",
        description="Multipart: the zip in `file`, conflicts to override in `force` (repeatable, also as "
                    "query parameters: SIGNATURE_CONFLICT, MANIFEST_OLD, MANIFEST_SAME, "
                    "DISTRIBUTOR_CONFLICT). The signature is checked first and reported alone; the other "
                    "conflicts are reported together. A re-import reconciles the manifest's subscriptions "
                    "in place.",
        parameters=[FORCE], request={"multipart/form-data": ManifestUploadSerializer},
        responses={200: ManifestImportSerializer, **ERRORS})
    def post(self, request, *args, **kwargs):
        try:
            http.check_length(request)
            upload = http.pick_file(request.FILES)
            data = http.read_file(upload)
            force = request.query_params.getlist("force") + request.data.getlist("force")
            record = importer.import_manifest(self.org, data, force=force, file_name=upload.name or "",
                                              principal=principal(request))
        except http.TooLarge as exc:
            return _error("too_large", str(exc), 413)
        except InvalidManifest as exc:
            return _error("invalid_manifest", exc.message, 400)
        except ValidationError as exc:
            return _error(getattr(exc, "code", None) or "invalid", " ".join(exc.messages), 400)
        except importer.ManifestConflict as exc:
            return _error("manifest_conflict", exc.record.message, 409, exc.record)
        except importer.ManifestRefused as exc:
            return _error("distributor_in_use", exc.record.message, 409, exc.record)
        return Response(ManifestImportSerializer(record).data)

    @extend_schema(summary="Delete the manifest", description="Removes the manifest's subscriptions and "
                   "their pools (their consumers are re-resolved) and forgets the distributor.",
                   responses={200: ManifestImportSerializer, 404: OpenApiResponse(ErrorSerializer)})
    def delete(self, request, *args, **kwargs):
        try:
            record = importer.delete_manifest(self.org, principal=principal(request))
        except importer.NoManifest:
            return _error("not_found", f"Organization {self.org.key} has no imported manifest.", 404)
        return Response(ManifestImportSerializer(record).data)


@org_path
@extend_schema(summary="Manifest import history (newest first)")
class ManifestHistoryView(OrgScopedMixin, generics.ListAPIView):
    queryset = ManifestImport.objects.defer("payload").order_by("-created", "-id")
    serializer_class = ManifestImportSerializer
    filter_backends: list = []


urlpatterns = [
    path("orgs/<str:org_key>/manifest/", ManifestView.as_view(), name="manifest"),
    path("orgs/<str:org_key>/manifest/history/", ManifestHistoryView.as_view(), name="manifest-history"),
]
