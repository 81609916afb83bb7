"""Organizations, their members' roles, and every registered machine (``System``)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from sam.ids import new_id

MAX_SOCKETS = 65_536  # no machine has more; a fact claiming more is capped


def _default_window() -> timedelta:
    return settings.SAM_UNMAPPED_WINDOW_DEFAULT


def _default_lifetime() -> timedelta:
    return settings.SAM_UNMAPPED_LIFETIME_DEFAULT


class Organization(models.Model):
    """A tenant (Candlepin "owner"); everything else belongs to exactly one."""

    class ContentAccess(models.TextChoices):
        """What clients are shown (orgs.content_access decides per consumer); sam accounts
        every system's coverage whatever they are shown."""

        ENTITLEMENT = "entitlement", "Entitlement mode for every client"
        SCA = "sca", "Simple content access for every client"
        PER_CLIENT = "per_client", ("Per client: SCA to clients that require it (RHEL 10), "
                                    "entitlement mode to the others")

    key = models.SlugField(max_length=255, unique=True)
    name = models.CharField(max_length=255)
    autobind_enabled = models.BooleanField(
        default=True, help_text="Systems of this org are auto-attached (healed) by the server."
    )
    hypervisor_autobind_enabled = models.BooleanField(
        default=True,
        help_text="A guest's host may be auto-attached to a subscription with virtual guests.",
    )
    unmapped_window = models.DurationField(
        default=_default_window,
        help_text="How long after registration a guest with no known host may take a "
        "temporary (unmapped guest) entitlement.",
    )
    unmapped_lifetime = models.DurationField(
        default=_default_lifetime,
        help_text="A temporary entitlement ends this long after the guest registered.",
    )
    content_access_mode = models.CharField(
        max_length=32, choices=ContentAccess.choices, default=ContentAccess.ENTITLEMENT,
        help_text="What subscription-manager is shown: entitlement mode (attach, entitlement "
                  "certificates), Simple Content Access, or per client (SCA only to clients "
                  "that require it: subscription-manager 1.30+, RHEL 10).",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        permissions = [
            ("view_org", "Read everything of the organization"),
            ("admin_org", "Change the organization, its subscriptions and systems"),
            ("checkin_org", "Report host/guest mappings (virt-who) for the organization"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(unmapped_window__gte=timedelta(0)), name="org_unmapped_window_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(unmapped_lifetime__gt=timedelta(0)), name="org_unmapped_lifetime_gt_0"
            ),
        ]

    def __str__(self) -> str:
        return self.key


class OrganizationUserPermission(UserObjectPermissionBase):
    """guardian's direct foreign-key table: a user's role permissions on one org."""

    content_object = models.ForeignKey(Organization, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        abstract = False


class OrganizationGroupPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Organization, on_delete=models.CASCADE)

    class Meta(GroupObjectPermissionBase.Meta):
        abstract = False


def coverage_flags(now) -> dict:
    """Annotations for systems: ``has_full`` (a full entitlement in force), ``has_temp`` (a
    temporary one), ``subscribed`` (any). See ``SystemQuerySet``. Entitlements live a layer
    above (subscriptions), which registers the definition when Django loads its models
    (``subscriptions.models.system_coverage_flags``): orgs never imports subscriptions."""
    return _coverage_flags[0](now)


_coverage_flags: list = []


def register_coverage_flags(flags):
    """Called once by ``subscriptions.models`` with the function behind ``coverage_flags``."""
    _coverage_flags[:] = [flags]
    return flags


class SystemQuerySet(models.QuerySet):
    """The domain's words for systems, defined once (issue 9 item 5) and used by the dashboard,
    the UI lists, the API filters and the Candlepin adapter alike.

    - **hypervisor**: a system virt-who reported (``type`` hypervisor). A physical machine
      registered with its DMI UUID keeps that UUID as hypervisor id, so virt-who finds it later,
      but it is not a hypervisor until a report names it.
    - **guest**: a registered (non-hypervisor) system with ``virt.is_guest``.
    - **physical system**: a registered system that is neither.
    - **covered**: holds an entitlement in force from a pool that is not an UNMAPPED_GUEST pool;
      **temporarily covered**: its only entitlements in force come from UNMAPPED_GUEST pools;
      **not covered**: no entitlement in force. **With a subscription**: any entitlement in force.
    """

    def hypervisors(self) -> SystemQuerySet:
        return self.filter(type=System.Type.HYPERVISOR)

    def guests(self) -> SystemQuerySet:
        return self.filter(type=System.Type.SYSTEM, is_guest=True)

    def physical(self) -> SystemQuerySet:
        return self.filter(type=System.Type.SYSTEM, is_guest=False)

    def of_kind(self, kind: str):
        """``guest``, ``physical`` or ``hypervisor`` (the list filters' ``type``)."""
        return {"guest": self.guests, "physical": self.physical,
                "hypervisor": self.hypervisors}[kind]()

    def with_fact(self, name: str, value: str):
        """Systems whose fact ``name`` equals ``value`` (a portable JSON key lookup)."""
        from django.db.models.fields.json import KeyTextTransform
        from django.db.models.lookups import Exact

        return self.filter(Exact(KeyTextTransform(name, "facts"), value))

    def with_coverage(self, now):
        return self.annotate(**coverage_flags(now))

    def covered(self, now):
        flags = coverage_flags(now)
        return self.filter(flags["has_full"])

    def temporarily_covered(self, now):
        flags = coverage_flags(now)
        return self.filter(~flags["has_full"], flags["has_temp"])

    def not_covered(self, now):
        flags = coverage_flags(now)
        return self.filter(~flags["subscribed"])

    def of_coverage(self, coverage: str, now):
        """``covered``, ``temporary`` or ``uncovered`` (the list filters' ``coverage``)."""
        return {"covered": self.covered, "temporary": self.temporarily_covered,
                "uncovered": self.not_covered}[coverage](now)

    def with_subscription(self, now):
        return self.filter(coverage_flags(now)["subscribed"])

    def without_subscription(self, now):
        return self.filter(~coverage_flags(now)["subscribed"])


def coverage_word(has_full: bool, has_temp: bool) -> str:
    """The coverage of a system from its ``coverage_flags``."""
    return "covered" if has_full else ("temporary" if has_temp else "uncovered")


class System(models.Model):
    """A registered machine: physical, guest (fact ``virt.is_guest``) or hypervisor.

    ``virt_uuid``/``virt_uuid_swapped`` and ``dmi_uuid`` are lower-cased copies of facts so the
    host of a guest and the hardware behind a hypervisor are found by index, set-based.
    ``current_host`` is maintained by the mapping services (hypervisors app); the engine reads it.
    """

    class Type(models.TextChoices):
        SYSTEM = "system", "System"
        HYPERVISOR = "hypervisor", "Hypervisor"

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="systems")
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.SYSTEM)
    name = models.CharField(max_length=255)
    facts = models.JSONField(default=dict, blank=True)
    installed_products = models.JSONField(
        default=list, blank=True, help_text='[{"productId": "479", "productName": ...}, ...]'
    )
    is_guest = models.BooleanField(default=False)
    virt_uuid = models.CharField(max_length=64, null=True, blank=True)
    virt_uuid_swapped = models.CharField(max_length=64, null=True, blank=True)
    dmi_uuid = models.CharField(max_length=64, null=True, blank=True)
    hypervisor_id = models.CharField(max_length=255, null=True, blank=True)
    reporter_id = models.CharField(max_length=255, null=True, blank=True)
    autoheal = models.BooleanField(default=True)
    last_checkin = models.DateTimeField(null=True, blank=True)
    current_host = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="current_guests"
    )
    host_unknown_since = models.DateTimeField(
        null=True, blank=True,
        help_text="Set when a guest that had a host stops being reported by any hypervisor.",
    )
    registered_at = models.DateTimeField()
    updated = models.DateTimeField(auto_now=True)
    # Not indexed on purpose: check-in time updates stay HOT. Only the mapping services write it.
    written_by_report = models.BigIntegerField(
        null=True, blank=True, editable=False,
        help_text="Id of the virt-who report that last wrote this hypervisor and its guest list; "
                  "cleared when anything else writes them (the identical-report shortcut).",
    )
    # Client intent (consumer-api.md): the consumer removed its own entitlements. sam's own
    # triggers (nightly heal, host auto-attach, a host's entitlement changes) attach nothing to
    # it while its inputs are what they were then: the same host, the same installed products,
    # no pool made or changed since. Its own attach or auto-heal ends it (subscriptions.services).
    self_removed_at = models.DateTimeField(null=True, blank=True, editable=False)
    self_removed_host = models.BigIntegerField(null=True, blank=True, editable=False)  # a System id
    self_removed_products = models.JSONField(null=True, blank=True, editable=False)

    # subscription-manager's version at its last request, and whether that client (or, without
    # a version, its distribution.version) requires SCA: the stored per-client decision
    # (orgs.content_access), made at registration and again when either changes.
    # Database defaults: virt-who's set-based ingest inserts systems with raw SQL.
    client_version = models.CharField(max_length=64, blank=True, default="", db_default="")
    client_requires_sca = models.BooleanField(default=False, db_default=False)

    objects = SystemQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            # A hypervisor is matched by (org, hypervisor id): never two rows for one id.
            models.UniqueConstraint(
                fields=["org", "hypervisor_id"], condition=Q(hypervisor_id__isnull=False),
                name="system_org_hypervisor_id_uniq",
            ),
            models.CheckConstraint(
                condition=Q(hypervisor_id__isnull=True) | ~Q(hypervisor_id=""),
                name="system_hypervisor_id_not_empty",
            ),
        ]
        indexes = [
            # Host lookup of guests: guest-id rows are matched against these two.
            models.Index(fields=["org", "virt_uuid"], name="system_org_virt_uuid_idx"),
            models.Index(fields=["org", "virt_uuid_swapped"], name="system_org_virt_uuid_sw_idx"),
            # Matching a reported hypervisor by its hardware uuid.
            models.Index(fields=["org", "dmi_uuid"], name="system_org_dmi_uuid_idx"),
            # Heartbeat: every hypervisor of one reporter.
            models.Index(fields=["org", "reporter_id"], name="system_org_reporter_idx"),
            models.Index(fields=["org", "type", "name"], name="system_org_type_name_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def installed_product_ids(self) -> list[str]:
        return [str(p["productId"]) for p in self.installed_products if p.get("productId")]

    @property
    def sockets(self) -> int:
        """``cpu.cpu_socket(s)`` as a positive integer; 1 when missing or unreadable. Capped at
        ``MAX_SOCKETS``: entitlement quantities are derived from it and must fit their column."""
        try:
            sockets = int(str(self.facts.get("cpu.cpu_socket(s)", "1")).strip())
            return min(MAX_SOCKETS, max(1, sockets))
        except (TypeError, ValueError):
            return 1


class ApiToken(models.Model):
    """A credential for scripts and agents, scoped to one org and one role.

    Only a short public ``prefix`` and an HMAC of the whole token are stored; the plaintext is
    shown once at creation (architecture.md habit 8).
    """

    ROLE_CHOICES = [("admin", "admin"), ("viewer", "viewer"), ("reporter", "reporter")]

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=ROLE_CHOICES)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(null=True, blank=True)
    # The virt-who reporter id a reporter token was made for (the setup page): reporter health
    # shows its expiry; empty for tokens made otherwise.
    reporter_id = models.CharField(max_length=255, blank=True, default="")
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["org", "name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="apitoken_org_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.org.key}/{self.name} ({self.role})"


class ConsumerIdentity(models.Model):
    """subscription-manager's side of a registered system: its identity certificate, its RSA
    key pair (sealed with ``SECRET_KEY``, sam/pki.py) and the Candlepin consumer fields sam
    keeps (system purpose, release, content tags).

    ``previous_serial`` is the certificate replaced by an automatic renewal: accepted until the
    new one is first presented or the old one expires (consumer-api.md "consumer auth").
    """

    class Via(models.TextChoices):
        PASSWORD = "subscription-manager", "subscription-manager (user and password)"
        ACTIVATION_KEY = "activation-key", "subscription-manager (activation key)"

    system = models.OneToOneField(System, on_delete=models.CASCADE, primary_key=True,
                                  related_name="identity")
    sealed_key = models.TextField(editable=False)
    serial = models.BigIntegerField(unique=True)  # consumer auth: certificate serial → identity
    cert_pem = models.TextField()
    not_after = models.DateTimeField()
    previous_serial = models.BigIntegerField(null=True, blank=True)
    previous_not_after = models.DateTimeField(null=True, blank=True)
    registered_via = models.CharField(max_length=32, choices=Via.choices, default=Via.PASSWORD)
    registered_by = models.CharField(max_length=255, blank=True)
    service_level = models.CharField(max_length=255, blank=True)
    role = models.CharField(max_length=255, blank=True)
    usage = models.CharField(max_length=255, blank=True)
    addons = models.JSONField(default=list, blank=True)
    release_ver = models.CharField(max_length=255, blank=True)
    content_tags = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"identity of {self.system_id} (serial {self.serial})"


class ContentAccessCertificate(models.Model):
    """The SCA ("OrgLevel") content certificate of a consumer presented Simple Content Access:
    delivered by serial like an entitlement certificate, refreshed through
    ``accessible_content``; deleted when the consumer is shown entitlement mode again."""

    system = models.OneToOneField(System, on_delete=models.CASCADE, primary_key=True,
                                  related_name="content_access_cert")
    serial = models.BigIntegerField(unique=True)
    cert_pem = models.TextField()
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    issued = models.DateTimeField()

    def __str__(self) -> str:
        return f"content access certificate of {self.system_id} (serial {self.serial})"


class DeletedSystem(models.Model):
    """The tombstone of an unregistered system: its uuid answers 410 with ``deletedId``."""

    uuid = models.UUIDField(unique=True)  # the 410 lookup
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deleted_systems")
    name = models.CharField(max_length=255, blank=True)
    deleted_by = models.CharField(max_length=255, blank=True)
    deleted = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-deleted", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.uuid}, deleted)"


class SystemEvent(models.Model):
    """Something about a system an admin should see: a possible clone, an activation key's
    pool that could not be used, an identity regenerated."""

    class Kind(models.TextChoices):
        POSSIBLE_CLONE = "possible_clone", "Possible clone"
        KEY_POOL_UNUSABLE = "key_pool_unusable", "Activation key pool not usable"
        IDENTITY_REGENERATED = "identity_regenerated", "Identity certificate regenerated"
        TAKEN_OVER = "taken_over", "Registration took over a virt-who hypervisor"

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="system_events")
    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["system", "kind"], name="systemevent_system_kind_idx")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class ActivationKey(models.Model):
    """Registers systems without credentials (Candlepin's activation key): it applies its
    release, system purpose and pools, and decides whether the system auto-attaches."""

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="activation_keys")
    name = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    auto_attach = models.BooleanField(default=True)
    service_level = models.CharField(max_length=255, blank=True)
    release_ver = models.CharField(max_length=255, blank=True)
    usage = models.CharField(max_length=255, blank=True)
    role = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["org", "name", "id"]
        constraints = [
            # Registration looks keys up by (org, name).
            models.UniqueConstraint(fields=["org", "name"], name="activationkey_org_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.org.key}/{self.name}"


class ActivationKeyPool(models.Model):
    """A pool an activation key attaches (by the pool's public uuid: orgs sits below the
    subscriptions app); ``quantity`` None lets the engine choose."""

    key = models.ForeignKey(ActivationKey, on_delete=models.CASCADE, related_name="pools")
    pool_uuid = models.UUIDField()
    quantity = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["key", "id"]
        constraints = [
            models.UniqueConstraint(fields=["key", "pool_uuid"], name="activationkeypool_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.key_id}: {self.pool_uuid} x {self.quantity or 'auto'}"
