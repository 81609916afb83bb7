"""REST API v1 resources of this app (see sam/api/urls.py): products, subscriptions, pools,
entitlements, entitlement events and the bulk import.

Every view is org-scoped by ``OrgScopedMixin`` (another org's object is a 404); writes go
through ``subscriptions.services``. List querysets load their related rows up front, so a page
costs the same number of queries whatever its size (tests pin it).
"""

from __future__ import annotations

import django_filters as filters
from django.db import transaction
from django.db.models import Prefetch, Q
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, parsers, serializers, status
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from orgs import activation
from orgs.models import ActivationKey
from sam import inputs
from sam.api.base import LargeBodyMixin, OrgScopedViewSet, check_if_match, etag, org_path
from sam.api.parsers import JSONParser
from subscriptions import importer, queries, services
from subscriptions import serializers as s
from subscriptions.models import Entitlement, EntitlementEvent, Pool, Product, Subscription

IF_MATCH = OpenApiParameter("If-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
                            description="The ETag of the version you read; 412 if it changed since.")
CONFLICT = OpenApiResponse(description="Refused: `error.reason` is the stable reason key.")
PRECONDITION = OpenApiResponse(description="If-Match does not name the current version.")


def _with_etag(response: Response, obj) -> Response:
    response["ETag"] = etag(obj)
    return response


# --- Products ---------------------------------------------------------------------------------

@extend_schema_view(
    create=extend_schema(request=s.ProductWriteSerializer, responses={201: s.ProductSerializer}),
    partial_update=extend_schema(request=s.ProductPatchSerializer, parameters=[IF_MATCH],
                                 responses={200: s.ProductSerializer, 412: PRECONDITION}),
)
@org_path
class ProductViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    queryset = queries.products()
    serializer_class = s.ProductSerializer
    lookup_field = "sku"
    lookup_value_regex = "[^/]+"
    filterset_fields = {"sku": ["exact", "in"], "name": ["icontains"]}
    ordering_fields = ["sku", "name", "created", "updated"]
    ordering = ["sku"]

    def retrieve(self, request, *args, **kwargs):
        obj = self.get_object()
        return _with_etag(Response(self.get_serializer(obj).data), obj)

    def _save(self, data: dict) -> Product:
        product = services.create_product(
            self.org, data["sku"], data["name"], data.get("attributes") or {},
            data.get("provided") or [], data.get("derived") or None)
        return self.get_queryset().get(pk=product.pk)

    def create(self, request, *args, **kwargs):
        write = s.ProductWriteSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        if Product.objects.filter(org=self.org, sku=write.validated_data["sku"].strip()).exists():
            raise serializers.ValidationError({"sku": ["A product with this sku already exists."]})
        product = self._save(write.validated_data)
        return _with_etag(Response(s.ProductSerializer(product).data, status=201), product)

    def partial_update(self, request, *args, **kwargs):
        write = s.ProductPatchSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        with transaction.atomic():
            current = self.get_queryset().select_for_update(of=("self",)).get(pk=self.get_object().pk)
            check_if_match(request, current)
            data = {"sku": current.sku, "name": current.name, "attributes": current.attributes,
                    "provided": [p.sku for p in current.provided_products.all()],
                    "derived": current.derived_product.sku if current.derived_product_id else None,
                    **write.validated_data}
            product = self._save(data)
        return _with_etag(Response(s.ProductSerializer(product).data), product)


# --- Subscriptions ----------------------------------------------------------------------------

class SubscriptionFilter(filters.FilterSet):
    product = filters.CharFilter(field_name="product__sku", help_text="Product sku.")
    contract_number = filters.CharFilter()
    active = filters.BooleanFilter(method="filter_active", help_text="Started and not yet ended.")

    class Meta:
        model = Subscription
        fields = ["product", "contract_number", "active"]

    def filter_active(self, queryset, name, value):
        now = timezone.now()
        q = Q(start__lte=now, end__gt=now)
        return queryset.filter(q) if value else queryset.exclude(q)


@extend_schema_view(
    create=extend_schema(request=s.SubscriptionCreateSerializer, responses={201: s.SubscriptionSerializer}),
    partial_update=extend_schema(request=s.SubscriptionPatchSerializer, parameters=[IF_MATCH],
                                 responses={200: s.SubscriptionSerializer, 412: PRECONDITION}),
    destroy=extend_schema(parameters=[IF_MATCH], responses={204: None, 412: PRECONDITION}),
)
@org_path
class SubscriptionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """Changing or deleting a subscription regenerates its pools and re-resolves the systems
    concerned (entitlements beyond a reduced quantity are revoked, newest first)."""

    queryset = queries.subscriptions()
    serializer_class = s.SubscriptionSerializer
    lookup_field = "uuid"
    filterset_class = SubscriptionFilter
    ordering_fields = ["start", "end", "created", "updated", "quantity", "product__sku"]
    ordering = ["product__sku", "start", "id"]

    def _reload(self, subscription: Subscription) -> Subscription:
        return self.get_queryset().get(pk=subscription.pk)

    def retrieve(self, request, *args, **kwargs):
        obj = self.get_object()
        return _with_etag(Response(self.get_serializer(obj).data), obj)

    def create(self, request, *args, **kwargs):
        write = s.SubscriptionCreateSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        data = dict(write.validated_data)
        sub = services.create_subscription(self.org, data.pop("product"), data.pop("quantity"),
                                           data.pop("start", None), data.pop("end", None),
                                           derived=data.pop("derived", None) or None, **data)
        sub = self._reload(sub)
        return _with_etag(Response(s.SubscriptionSerializer(sub).data, status=201), sub)

    def partial_update(self, request, *args, **kwargs):
        write = s.SubscriptionPatchSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        with transaction.atomic():
            sub = self._locked(request)
            services.update_subscription(self.org, sub.uuid, trigger="api", **write.validated_data)
        sub = self._reload(sub)
        return _with_etag(Response(s.SubscriptionSerializer(sub).data), sub)

    def destroy(self, request, *args, **kwargs):
        with transaction.atomic():
            sub = self._locked(request)
            services.delete_subscription(self.org, sub.uuid, trigger="api")
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _locked(self, request) -> Subscription:
        """The row locked until commit, so If-Match is checked against what we change."""
        sub = self.get_object()
        sub = Subscription.objects.select_for_update().get(pk=sub.pk)
        check_if_match(request, sub)
        return sub


# --- Pools ------------------------------------------------------------------------------------

class PoolFilter(filters.FilterSet):
    type = filters.ChoiceFilter(choices=Pool.Type.choices)
    product = filters.CharFilter(field_name="product__sku", help_text="Product sku.")
    subscription = filters.UUIDFilter(field_name="subscription__uuid")
    requires_host = filters.UUIDFilter(field_name="requires_host__uuid", help_text="Host system uuid.")

    class Meta:
        model = Pool
        fields = ["type", "product", "subscription", "requires_host"]


@org_path
class PoolViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    queryset = Pool.objects.select_related("product", "requires_host", "subscription")
    serializer_class = s.PoolSerializer
    lookup_field = "uuid"
    filterset_class = PoolFilter
    ordering_fields = ["created", "start", "end", "type", "quantity", "consumed", "product__sku"]
    ordering = ["created", "id"]

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            consumers = Entitlement.objects.select_related("system").order_by("created", "id")[:500]
            queryset = queryset.prefetch_related(Prefetch("entitlements", consumers, to_attr="consumer_list"))
        return queryset

    def get_serializer_class(self):
        return s.PoolDetailSerializer if self.action == "retrieve" else s.PoolSerializer


# --- Entitlements -----------------------------------------------------------------------------

class EntitlementFilter(filters.FilterSet):
    system = filters.UUIDFilter(field_name="system__uuid", help_text="System uuid.")
    pool = filters.UUIDFilter(field_name="pool__uuid", help_text="Pool uuid.")

    class Meta:
        model = Entitlement
        fields = ["system", "pool"]


@extend_schema_view(
    create=extend_schema(request=s.EntitlementCreateSerializer,
                         responses={201: s.EntitlementSerializer, 409: CONFLICT}),
)
@org_path
class EntitlementViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                         OrgScopedViewSet):
    """Attach a pool to a system by hand, or remove an entitlement. Entitling a host to a pool
    with virtual guests creates its derived pool; removing it deletes that pool, and the host's
    guests are re-resolved either way."""

    queryset = Entitlement.objects.select_related("system", "pool__product")
    serializer_class = s.EntitlementSerializer
    lookup_field = "uuid"
    filterset_class = EntitlementFilter
    ordering_fields = ["created", "start", "end", "quantity"]
    ordering = ["created", "id"]

    def create(self, request, *args, **kwargs):
        write = s.EntitlementCreateSerializer(data=request.data)
        write.is_valid(raise_exception=True)
        data = write.validated_data
        ent = services.attach(self.org, data["system"], data["pool"], data["quantity"], trigger="api")
        ent = self.get_queryset().get(pk=ent.pk)
        return Response(s.EntitlementSerializer(ent).data, status=201)

    def perform_destroy(self, instance: Entitlement) -> None:
        services.remove_entitlement(self.org, instance.uuid, trigger="api")


# --- Events -----------------------------------------------------------------------------------

class EventFilter(filters.FilterSet):
    system = filters.UUIDFilter(field_name="system_uuid", help_text="System uuid.")
    action = filters.ChoiceFilter(choices=EntitlementEvent.Action.choices)
    reason = filters.CharFilter()
    trigger = filters.CharFilter()
    since = filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte",
                                      validators=[inputs.validate_datetime_range])

    class Meta:
        model = EntitlementEvent
        fields = ["system", "action", "reason", "trigger", "since"]


@org_path
class EntitlementEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """The entitlement change log (domain.md 8), newest first."""

    queryset = EntitlementEvent.objects.all()
    serializer_class = s.EntitlementEventSerializer
    filterset_class = EventFilter
    ordering_fields = ["created", "id"]
    ordering = ["-created", "-id"]


# --- Bulk import ------------------------------------------------------------------------------

class CSVTextParser(parsers.BaseParser):
    """A raw ``text/csv`` body (``curl --data-binary @subs.csv -H 'Content-Type: text/csv'``)."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read()


@extend_schema_view(create=extend_schema(
    summary="Import products and subscriptions (all or nothing)",
    description="A JSON body, a raw `text/csv` body, or a multipart upload `file` (JSON or CSV). "
                "Every row is validated first; one invalid row applies nothing and answers 400 with "
                "a per-row report. Format: docs/import-format.md.",
    parameters=[OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Validate only.")],
    request={"application/json": s.ImportJSONSerializer, "multipart/form-data": s.ImportFileSerializer,
             "text/csv": OpenApiTypes.STR},
    responses={200: s.ImportResultSerializer, 400: s.ImportErrorSerializer},
))
@org_path
class ImportViewSet(LargeBodyMixin, OrgScopedViewSet):
    # Up to the import limit (not Django's 2.5 MB): JSON, CSV text or a multipart upload.
    sam_body_limit = importer.MAX_BODY
    parser_classes = [JSONParser, parsers.MultiPartParser, CSVTextParser]
    serializer_class = s.ImportResultSerializer
    queryset = Product.objects.none()
    pagination_class = None
    filter_backends: list = []

    def create(self, request, *args, **kwargs):
        dry_run = request.query_params.get("dry_run", "").lower() in ("1", "true", "yes")
        try:
            if "file" in request.FILES:
                upload = request.FILES["file"]
                if upload.size > importer.MAX_BYTES:
                    raise importer.InvalidImport("The file is larger than the import limit.")
                rows = importer.parse(upload.read(), upload.name, upload.content_type)
            elif isinstance(request.data, (bytes, str)):  # raw text/csv body
                rows = importer.parse(request.data, content_type="text/csv")
            elif request.content_type.startswith("multipart/"):
                raise importer.InvalidImport("Upload the file in the multipart field 'file'.")
            else:
                rows = importer.parse_json(request.data)
            result = importer.run(self.org, rows, dry_run=dry_run)
        except ParseError as error:  # malformed, too deep, NUL or surrogates: the whole body
            failure = importer.InvalidImport(str(error.detail))
        except importer.InvalidImport as error:
            failure = error
        else:
            return Response(result)
        body = {"error": {"code": "invalid_import", "message": failure.message, "rows": failure.rows}}
        return Response(body, status=400)



# --- Activation keys --------------------------------------------------------------------------

class ActivationKeyPoolSerializer(serializers.Serializer):
    pool = serializers.UUIDField(source="pool_uuid", help_text="Pool uuid (of this org).")
    quantity = serializers.IntegerField(min_value=1, max_value=inputs.INT32_MAX, allow_null=True,
                                        required=False, help_text="Units; null: the engine chooses.")


class ActivationKeySerializer(serializers.ModelSerializer):
    pools = ActivationKeyPoolSerializer(many=True, required=False)

    class Meta:
        model = ActivationKey
        fields = ["uuid", "name", "description", "auto_attach", "service_level", "release_ver",
                  "usage", "role", "pools", "created", "updated"]
        read_only_fields = ["uuid", "created", "updated"]
        # Uniqueness per org is checked by orgs.activation (the org is not a field here).
        validators = []
        extra_kwargs = {"name": {"validators": []}}


@org_path
class ActivationKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """Activation keys register systems without credentials (``subscription-manager register
    --activationkey``): admins manage them, viewers read them. ``pools`` replaces the key's pools."""

    queryset = ActivationKey.objects.prefetch_related("pools")
    serializer_class = ActivationKeySerializer
    lookup_field = "uuid"
    ordering = ["name", "id"]

    def _set_pools(self, key: ActivationKey, pools: list[dict] | None) -> None:
        if pools is None:
            return
        known = set(Pool.objects.filter(org=self.org, uuid__in=[p["pool_uuid"] for p in pools])
                    .values_list("uuid", flat=True))
        missing = [str(p["pool_uuid"]) for p in pools if p["pool_uuid"] not in known]
        if missing:
            raise serializers.ValidationError({"pools": [f"Pool {missing[0]} does not exist in "
                                                         f"organization {self.org.key}."]})
        key.pools.exclude(pool_uuid__in=[p["pool_uuid"] for p in pools]).delete()
        for entry in pools:
            activation.add_pool(key, entry["pool_uuid"], entry.get("quantity"))

    def create(self, request, *args, **kwargs):
        write = ActivationKeySerializer(data=request.data)
        write.is_valid(raise_exception=True)
        data = dict(write.validated_data)
        pools = data.pop("pools", None)
        with transaction.atomic():
            key = activation.create_key(self.org, data.pop("name"), **data)
            self._set_pools(key, pools)
        return Response(ActivationKeySerializer(self.get_queryset().get(pk=key.pk)).data, status=201)

    def partial_update(self, request, *args, **kwargs):
        key = self.get_object()
        write = ActivationKeySerializer(data=request.data, partial=True)
        write.is_valid(raise_exception=True)
        data = dict(write.validated_data)
        pools = data.pop("pools", None)
        with transaction.atomic():
            key = activation.update_key(key, **data)
            self._set_pools(key, pools)
        return Response(ActivationKeySerializer(self.get_queryset().get(pk=key.pk)).data)

    def destroy(self, request, *args, **kwargs):
        activation.delete_key(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


ROUTES = [
    (r"orgs/(?P<org_key>[^/.]+)/products", ProductViewSet, "product"),
    (r"orgs/(?P<org_key>[^/.]+)/subscriptions", SubscriptionViewSet, "subscription"),
    (r"orgs/(?P<org_key>[^/.]+)/pools", PoolViewSet, "pool"),
    (r"orgs/(?P<org_key>[^/.]+)/entitlements", EntitlementViewSet, "entitlement"),
    (r"orgs/(?P<org_key>[^/.]+)/events", EntitlementEventViewSet, "entitlement-event"),
    (r"orgs/(?P<org_key>[^/.]+)/import", ImportViewSet, "import"),
    (r"orgs/(?P<org_key>[^/.]+)/activation-keys", ActivationKeyViewSet, "activation-key"),
]
