"""Products, subscriptions, the pools derived from them, entitlements and their event log."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from orgs.models import Organization, System, register_coverage_flags
from sam.ids import new_id
from subscriptions.engine import UNLIMITED


class Product(models.Model):
    """A SKU or an engineering product. ``sku`` is the Candlepin product id (e.g. ``479``)."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="products")
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    attributes = models.JSONField(default=dict, blank=True)
    provided_products = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="provided_by"
    )
    derived_product = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.RESTRICT, related_name="derived_for"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.UniqueConstraint(fields=["org", "sku"], name="product_org_sku_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.name})"


class Subscription(models.Model):
    """What the org bought: a product (+ derived product), a quantity, a period."""

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="subscriptions")
    product = models.ForeignKey(Product, on_delete=models.RESTRICT, related_name="subscriptions")
    derived_product = models.ForeignKey(
        Product, null=True, blank=True, on_delete=models.RESTRICT, related_name="derived_subscriptions"
    )
    quantity = models.IntegerField(help_text="-1 = unlimited")
    start = models.DateTimeField()
    end = models.DateTimeField()
    contract_number = models.CharField(max_length=64, blank=True)
    account_number = models.CharField(max_length=64, blank=True)
    order_number = models.CharField(max_length=64, blank=True)
    # Set for subscriptions imported from a Red Hat manifest (one per upstream entitlement):
    # read-only in the UI and API, reconciled by the next import, removed by "delete manifest".
    managed = models.BooleanField(default=False, help_text="Managed by the imported manifest.")
    upstream_pool_id = models.CharField(max_length=64, blank=True)
    upstream_entitlement_id = models.CharField(max_length=64, blank=True)
    upstream_cert_serial = models.CharField(max_length=40, blank=True,
                                            help_text="Serial of the upstream entitlement certificate.")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["org", "product__sku", "start"]
        constraints = [
            models.CheckConstraint(
                condition=Q(quantity=UNLIMITED) | Q(quantity__gt=0), name="subscription_quantity_valid"
            ),
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="subscription_end_after_start"),
            # A manifest's entitlement is one subscription of the org (the re-import's key).
            models.UniqueConstraint(
                fields=["org", "upstream_entitlement_id"], condition=Q(managed=True),
                name="subscription_upstream_ent_uniq",
            ),
        ]
        indexes = [models.Index(fields=["end"], name="subscription_end_idx")]  # expiry sweep

    def __str__(self) -> str:
        return f"{self.product.sku} x{self.quantity}"


class Pool(models.Model):
    """A consumable quantity derived from a subscription (domain.md section 3)."""

    class Type(models.TextChoices):
        NORMAL = "NORMAL"
        UNMAPPED_GUEST = "UNMAPPED_GUEST"
        ENTITLEMENT_DERIVED = "ENTITLEMENT_DERIVED"
        STACK_DERIVED = "STACK_DERIVED"
        BONUS = "BONUS"

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="pools")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="pools")
    type = models.CharField(max_length=24, choices=Type.choices)
    product = models.ForeignKey(Product, on_delete=models.RESTRICT, related_name="pools")
    quantity = models.IntegerField(help_text="-1 = unlimited")
    consumed = models.IntegerField(default=0)
    start = models.DateTimeField()
    end = models.DateTimeField()
    attributes = models.JSONField(default=dict, blank=True)
    virt_only = models.BooleanField(default=False)
    physical_only = models.BooleanField(default=False)
    unmapped_guests_only = models.BooleanField(default=False)
    multi_entitlement = models.BooleanField(default=False)
    requires_host = models.ForeignKey(
        System, null=True, blank=True, on_delete=models.CASCADE, related_name="derived_pools",
        help_text="Only guests of this host may use the pool (derived pools).",
    )
    source_entitlement = models.ForeignKey(
        "Entitlement", null=True, blank=True, on_delete=models.CASCADE, related_name="derived_pools"
    )
    source_stack_id = models.CharField(max_length=255, null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            # Consumption never exceeds quantity, whatever the code path (concurrent binds).
            models.CheckConstraint(
                condition=Q(quantity=UNLIMITED) | Q(consumed__lte=F("quantity")),
                name="pool_consumed_lte_quantity",
            ),
            models.CheckConstraint(condition=Q(consumed__gte=0), name="pool_consumed_gte_0"),
            models.CheckConstraint(condition=Q(quantity__gte=UNLIMITED), name="pool_quantity_valid"),
            # One NORMAL and one UNMAPPED_GUEST pool per subscription.
            models.UniqueConstraint(
                fields=["subscription", "type"],
                condition=Q(type__in=["NORMAL", "UNMAPPED_GUEST"]),
                name="pool_subscription_primary_uniq",
            ),
            # One derived pool per host entitlement, one per (host, stack).
            models.UniqueConstraint(
                fields=["source_entitlement"], condition=Q(type="ENTITLEMENT_DERIVED"),
                name="pool_source_entitlement_uniq",
            ),
            models.UniqueConstraint(
                fields=["requires_host", "source_stack_id"], condition=Q(type="STACK_DERIVED"),
                name="pool_host_stack_uniq",
            ),
        ]
        indexes = [
            # Candidate pools of an org for resolution.
            models.Index(fields=["org", "type", "end"], name="pool_org_type_end_idx"),
        ]

    def __str__(self) -> str:
        qty = "unlimited" if self.quantity == UNLIMITED else self.quantity
        return f"{self.type} {self.product.sku} ({self.consumed}/{qty})"

    @property
    def unlimited(self) -> bool:
        return self.quantity == UNLIMITED

    @property
    def available(self) -> int | None:
        """Units left, ``None`` for unlimited."""
        return None if self.unlimited else max(0, self.quantity - self.consumed)


class EntitlementQuerySet(models.QuerySet):
    """**In force** at ``now``: within its own period and its pool's (issue 9 item 5: the one
    definition; ``engine.active`` is the same rule for a loaded row)."""

    def in_force(self, now):
        return self.filter(start__lte=now, end__gt=now, pool__start__lte=now, pool__end__gt=now)

    def temporary(self):
        """From UNMAPPED_GUEST pools: a guest's cover while its host is not reported."""
        return self.filter(pool__type=Pool.Type.UNMAPPED_GUEST)

    def full(self):
        return self.exclude(pool__type=Pool.Type.UNMAPPED_GUEST)


@register_coverage_flags
def system_coverage_flags(now) -> dict:
    """``orgs.models.coverage_flags``: is a system covered, temporarily covered, subscribed."""
    held = Entitlement.objects.in_force(now).filter(system=models.OuterRef("pk"))
    return {"has_full": models.Exists(held.full()), "has_temp": models.Exists(held.temporary()),
            "subscribed": models.Exists(held)}


class Entitlement(models.Model):
    """A system consuming ``quantity`` units of a pool."""

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="entitlements")
    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="entitlements")
    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="entitlements")
    quantity = models.PositiveIntegerField(default=1)
    start = models.DateTimeField()
    end = models.DateTimeField(help_text="Temporary (unmapped guest) entitlements end early.")
    multi_entitlement = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    objects = EntitlementQuerySet.as_manager()

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["system", "pool"], condition=Q(multi_entitlement=False),
                name="entitlement_system_pool_uniq",
            ),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="entitlement_quantity_gte_1"),
        ]
        indexes = [
            models.Index(fields=["pool"], name="entitlement_pool_idx"),  # who consumes a pool
            models.Index(fields=["end"], name="entitlement_end_idx"),  # expiry sweep
        ]

    def __str__(self) -> str:
        return f"{self.system} <- {self.pool}"


class EntitlementCertificate(models.Model):
    """The v3 certificate of one entitlement (rhsm-wire.md 4.2), signed by sam's CA for the
    consumer's own key. Issued in the transaction that creates or changes the entitlement;
    a change of its dates, quantity or pool issues a new one (new serial); it goes with the
    entitlement, so a removed entitlement's serial disappears from ``/certificates/serials``."""

    entitlement = models.OneToOneField(Entitlement, on_delete=models.CASCADE, primary_key=True,
                                       related_name="certificate")
    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="entitlement_certificates")
    serial = models.BigIntegerField(unique=True)
    cert_pem = models.TextField()
    # What the certificate states: a difference from the entitlement means re-issue.
    pool_id = models.BigIntegerField()
    quantity = models.PositiveIntegerField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    issued = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["system"], name="entcert_system_idx")]  # serials check

    def __str__(self) -> str:
        return f"{self.serial} ({self.entitlement_id})"


class EntitlementEvent(models.Model):
    """Append-only log of entitlement changes: what, why, which trigger (domain.md 8).

    Names and ids are copied so the event survives the deletion of the system or pool.
    """

    class Action(models.TextChoices):
        ATTACHED = "attached"
        REVOKED = "revoked"

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="entitlement_events")
    system = models.ForeignKey(System, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="entitlement_events")
    system_uuid = models.UUIDField()
    system_name = models.CharField(max_length=255)
    pool_uuid = models.UUIDField()
    pool_type = models.CharField(max_length=24)
    product_sku = models.CharField(max_length=64)
    entitlement_uuid = models.UUIDField()
    quantity = models.PositiveIntegerField(default=1)
    action = models.CharField(max_length=16, choices=Action.choices)
    reason = models.CharField(max_length=64, help_text="Stable key, e.g. host_mismatch, expired.")
    trigger = models.CharField(max_length=64, help_text="What caused it, e.g. report, manual.")
    host_name = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["org", "system_uuid", "created"], name="entevent_system_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.product_sku} for {self.system_name} ({self.reason})"


class CoverageSnapshot(models.Model):
    """One org's coverage counts on one day (the dashboard's coverage-over-time chart).

    Written once a day by ``subscriptions.tasks.record_coverage_snapshots`` (an upsert, so a
    second run the same day only refreshes the row).
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="coverage_snapshots")
    day = models.DateField()
    guests_covered = models.PositiveIntegerField(default=0)
    guests_temporary = models.PositiveIntegerField(default=0)
    guests_uncovered = models.PositiveIntegerField(default=0)
    hypervisors_with = models.PositiveIntegerField(default=0)
    hypervisors_without = models.PositiveIntegerField(default=0)
    recorded = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["org", "day"]
        constraints = [
            models.UniqueConstraint(fields=["org", "day"], name="coveragesnapshot_org_day_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.day}"


# --- Red Hat manifests (subscriptions/manifest/) -----------------------------------------------

class UpstreamDistributor(models.Model):
    """The upstream "subscription allocation" whose manifest an org imported (Candlepin's
    UpstreamConsumer) and the export time of that manifest, for the MANIFEST_OLD/SAME checks.

    Only public facts are kept: the identity certificate's serial and expiry, never its key.
    """

    org = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="upstream")
    # One org per distributor (Candlepin refuses a second org, not overridable).
    uuid = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=255, blank=True)
    type = models.CharField(max_length=64, blank=True, help_text="satellite, sam, candlepin, ...")
    owner_key = models.CharField(max_length=255, blank=True, help_text="The Red Hat account.")
    content_access_mode = models.CharField(max_length=64, blank=True)
    url_web = models.CharField(max_length=255, blank=True)
    url_api = models.CharField(max_length=255, blank=True)
    id_cert_serial = models.CharField(max_length=40, blank=True)
    id_cert_expires = models.DateTimeField(null=True, blank=True,
                                           help_text="The manifest's expiry (identity certificate).")
    manifest_created = models.DateTimeField(help_text="meta.json created of the last import.")
    manifest_version = models.CharField(max_length=64, blank=True)
    imported = models.DateTimeField()

    class Meta:
        ordering = ["org"]

    def __str__(self) -> str:
        return f"{self.name or self.uuid} ({self.org_id})"


class ManifestImport(models.Model):
    """One manifest import or delete: the import history (Candlepin's ImportRecord) and, for
    the Candlepin ``imports/async`` endpoint, the job a client polls at ``/jobs/{id}``.

    ``payload`` holds the parsed manifest (no certificate, no key) while the job waits; it is
    cleared when the job ends.
    """

    class State(models.TextChoices):
        CREATED = "CREATED"
        RUNNING = "RUNNING"
        FINISHED = "FINISHED"
        FAILED = "FAILED"

    class Status(models.TextChoices):
        SUCCESS = "SUCCESS"
        SUCCESS_WITH_WARNING = "SUCCESS_WITH_WARNING"
        FAILURE = "FAILURE"
        DELETE = "DELETE"

    class Kind(models.TextChoices):
        IMPORT = "import"
        DELETE = "delete"

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="manifest_imports")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.IMPORT)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CREATED)
    status = models.CharField(max_length=24, choices=Status.choices, blank=True)
    message = models.TextField(blank=True)
    conflicts = models.JSONField(default=list, blank=True, help_text='[{"key", "message", "forced"}]')
    forced = models.JSONField(default=list, blank=True)
    signature = models.CharField(max_length=16, blank=True, help_text="valid, invalid or untrusted")
    signer = models.CharField(max_length=255, blank=True)
    file_name = models.CharField(max_length=255, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True)
    file_size = models.PositiveIntegerField(default=0)
    generated_by = models.CharField(max_length=255, blank=True, help_text="meta.json principalName")
    generated_date = models.DateTimeField(null=True, blank=True, help_text="meta.json created")
    upstream = models.JSONField(null=True, blank=True, help_text="The distributor, as imported.")
    counts = models.JSONField(default=dict, blank=True)
    principal = models.CharField(max_length=255, blank=True)
    payload = models.BinaryField(null=True, blank=True, help_text="zlib-compressed parsed manifest")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["org", "-created"], name="manifestimport_org_idx")]  # history

    def __str__(self) -> str:
        return f"{self.kind} {self.uuid} ({self.state} {self.status})"


class SystemCompliance(models.Model):
    """A system's compliance as the engine computed it at the last change of its entitlements,
    installed products or host: ``GET /consumers/{uuid}/compliance`` is one read of ``answer``
    (Candlepin's ComplianceStatus keys, without the request-time ``date``)."""

    system = models.OneToOneField(System, on_delete=models.CASCADE, primary_key=True,
                                  related_name="stored_compliance")
    status = models.CharField(max_length=16)  # valid | partial | invalid | disabled
    answer = models.JSONField()
    compliant_until = models.DateTimeField(null=True, blank=True)
    computed = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.system_id}: {self.status}"
