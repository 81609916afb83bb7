"""API shapes of products, subscriptions, pools, entitlements, events and the bulk import.

Read serializers expect the querysets of ``subscriptions/api.py`` (select_related/prefetch), so
a list page costs a constant number of queries. Writes go through ``subscriptions.services``.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from subscriptions.models import Entitlement, EntitlementEvent, Pool, Product, Subscription

# --- Small nested shapes ----------------------------------------------------------------------


class SystemBriefSerializer(serializers.Serializer):
    uuid = serializers.UUIDField(read_only=True)
    name = serializers.CharField(read_only=True)


class ProductRefSerializer(serializers.Serializer):
    sku = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)


class PoolBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Pool
        fields = ["uuid", "type", "quantity", "consumed"]


# --- Products ---------------------------------------------------------------------------------


class ProductSerializer(serializers.ModelSerializer):
    attributes = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    provided = serializers.SerializerMethodField()
    derived = serializers.SerializerMethodField()

    class Meta:
        model = Product
        fields = ["sku", "name", "attributes", "provided", "derived", "created", "updated"]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_provided(self, obj: Product) -> list[str]:
        return sorted(p.sku for p in obj.provided_products.all())

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_derived(self, obj: Product) -> str | None:
        return obj.derived_product.sku if obj.derived_product_id else None


class ProductWriteSerializer(serializers.Serializer):
    """Create (``sku`` and ``name`` required) or change a product; lists replace, not merge."""

    sku = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=255)
    attributes = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    provided = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    derived = serializers.CharField(max_length=64, allow_null=True, allow_blank=True, required=False)


class ProductPatchSerializer(ProductWriteSerializer):
    sku = None
    name = serializers.CharField(max_length=255, required=False)


# --- Subscriptions ----------------------------------------------------------------------------


class SubscriptionSerializer(serializers.ModelSerializer):
    product = serializers.CharField(source="product.sku", read_only=True)
    product_name = serializers.CharField(source="product.name", read_only=True)
    derived_product = serializers.CharField(source="derived_product.sku", read_only=True,
                                            allow_null=True, default=None)
    pools = PoolBriefSerializer(source="primary_pools", many=True, read_only=True,
                                help_text="The NORMAL and UNMAPPED_GUEST pools.")
    derived_pools = serializers.IntegerField(
        source="derived_pool_count", read_only=True,
        help_text="How many host-derived pools exist (list them with /pools/?subscription=).")

    class Meta:
        model = Subscription
        fields = ["uuid", "product", "product_name", "derived_product", "quantity", "start", "end",
                  "contract_number", "account_number", "order_number", "pools", "derived_pools",
                  "managed", "upstream_pool_id", "upstream_entitlement_id", "created", "updated"]
        read_only_fields = ["managed", "upstream_pool_id", "upstream_entitlement_id"]


class SubscriptionCreateSerializer(serializers.Serializer):
    product = serializers.CharField(max_length=64, help_text="Product sku.")
    quantity = serializers.IntegerField(help_text="-1 = unlimited.")
    start = serializers.DateTimeField(required=False, help_text="Default: now.")
    end = serializers.DateTimeField(required=False, help_text="Default: one year after start.")
    derived = serializers.CharField(max_length=64, required=False, allow_blank=True,
                                    help_text="Derived product sku (default: the product's).")
    contract_number = serializers.CharField(max_length=64, required=False, allow_blank=True)
    account_number = serializers.CharField(max_length=64, required=False, allow_blank=True)
    order_number = serializers.CharField(max_length=64, required=False, allow_blank=True)


class SubscriptionPatchSerializer(serializers.Serializer):
    quantity = serializers.IntegerField(required=False, help_text="-1 = unlimited.")
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)


# --- Pools ------------------------------------------------------------------------------------


class PoolSerializer(serializers.ModelSerializer):
    product = ProductRefSerializer(read_only=True)
    requires_host = SystemBriefSerializer(read_only=True, allow_null=True)
    subscription = serializers.UUIDField(source="subscription.uuid", read_only=True)

    class Meta:
        model = Pool
        fields = ["uuid", "type", "product", "quantity", "consumed", "start", "end", "requires_host",
                  "subscription", "virt_only", "physical_only", "unmapped_guests_only",
                  "multi_entitlement", "attributes", "created"]


class PoolConsumerSerializer(serializers.ModelSerializer):
    system = SystemBriefSerializer(read_only=True)

    class Meta:
        model = Entitlement
        fields = ["uuid", "system", "quantity", "start", "end"]


class PoolDetailSerializer(PoolSerializer):
    consumers = PoolConsumerSerializer(source="consumer_list", many=True, read_only=True,
                                       help_text="Entitlements from this pool (first 500).")

    class Meta(PoolSerializer.Meta):
        fields = [*PoolSerializer.Meta.fields, "consumers"]


# --- Entitlements and events ------------------------------------------------------------------


class EntitlementSerializer(serializers.ModelSerializer):
    system = SystemBriefSerializer(read_only=True)
    pool = serializers.UUIDField(source="pool.uuid", read_only=True)
    pool_type = serializers.CharField(source="pool.type", read_only=True)
    product = serializers.CharField(source="pool.product.sku", read_only=True)

    class Meta:
        model = Entitlement
        fields = ["uuid", "system", "pool", "pool_type", "product", "quantity", "start", "end", "created"]


class EntitlementCreateSerializer(serializers.Serializer):
    system = serializers.UUIDField(help_text="The system to entitle.")
    pool = serializers.UUIDField(help_text="The pool to consume from.")
    quantity = serializers.IntegerField(min_value=1, default=1)


class EntitlementEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = EntitlementEvent
        fields = ["id", "created", "action", "reason", "trigger", "system_uuid", "system_name",
                  "pool_uuid", "pool_type", "product_sku", "entitlement_uuid", "quantity", "host_name"]


# --- Bulk import (schema only: subscriptions/importer.py validates row by row) ---------------


class ImportProductRowSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    attributes = serializers.DictField(child=serializers.CharField(), required=False)
    provided = serializers.ListField(child=serializers.CharField(), required=False)
    derived = serializers.CharField(required=False, allow_null=True)


class ImportSubscriptionRowSerializer(serializers.Serializer):
    product = serializers.CharField()
    quantity = serializers.IntegerField()
    start = serializers.CharField(help_text="ISO 8601 date or date-time (UTC if no offset).")
    end = serializers.CharField(help_text="ISO 8601 date or date-time (UTC if no offset).")
    contract_number = serializers.CharField(help_text="The import key (alias: external_id).")
    derived = serializers.CharField(required=False, allow_null=True)
    account_number = serializers.CharField(required=False)
    order_number = serializers.CharField(required=False)


class ImportJSONSerializer(serializers.Serializer):
    products = ImportProductRowSerializer(many=True, required=False)
    subscriptions = ImportSubscriptionRowSerializer(many=True, required=False)


class ImportFileSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A JSON or CSV file (docs/import-format.md).")


class ImportCountsSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()


class ImportResultSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    rows = serializers.IntegerField()
    products = ImportCountsSerializer()
    subscriptions = ImportCountsSerializer()


class ImportRowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField()
    record = serializers.CharField(allow_null=True)
    key = serializers.CharField(allow_null=True)
    path = serializers.CharField(required=False)
    errors = serializers.ListField(child=serializers.CharField())


class ImportErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    rows = ImportRowErrorSerializer(many=True, required=False,
                                    help_text="Absent when the request is refused as a whole.")


class ImportErrorSerializer(serializers.Serializer):
    error = ImportErrorBodySerializer()
