"""Organizations, their members' roles, and every registered machine (``System``)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from sam.ids import new_id


def _default_window() -> timedelta:
    return settings.SAM_UNMAPPED_WINDOW_DEFAULT


def _default_lifetime() -> timedelta:
    return settings.SAM_UNMAPPED_LIFETIME_DEFAULT


class Organization(models.Model):
    """A tenant (Candlepin "owner"); everything else belongs to exactly one."""

    class ContentAccess(models.TextChoices):
        ENTITLEMENT = "entitlement", "Entitlement (per-system accounting)"
        SCA = "org_environment", "Simple content access"

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
        max_length=32, choices=ContentAccess.choices, default=ContentAccess.ENTITLEMENT
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
        """``cpu.cpu_socket(s)`` as a positive integer; 1 when missing or unreadable."""
        try:
            return max(1, int(str(self.facts.get("cpu.cpu_socket(s)", "1")).strip()))
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
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["org", "name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="apitoken_org_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.org.key}/{self.name} ({self.role})"
