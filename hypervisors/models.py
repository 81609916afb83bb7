"""The host→guest mapping reported by virt-who, and each guest UUID's host timeline."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from orgs.models import Organization, System


class GuestId(models.Model):
    """"Host H reports guest UUID G" (Candlepin GuestId). ``guest_uuid`` is lower-cased.

    The current host of a guest UUID is the host of its most recently ``updated`` row.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="guest_ids")
    host = models.ForeignKey(System, on_delete=models.CASCADE, related_name="guest_ids")
    guest_uuid = models.CharField(max_length=64)
    attributes = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField()

    class Meta:
        ordering = ["host", "guest_uuid"]
        constraints = [
            models.UniqueConstraint(fields=["host", "guest_uuid"], name="guestid_host_guest_uniq"),
        ]
        indexes = [
            # Current host of a guest UUID: newest row among those of the org for that UUID.
            models.Index(fields=["org", "guest_uuid", "updated"], name="guestid_org_guest_upd_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.host} -> {self.guest_uuid}"


class GuestHostInterval(models.Model):
    """One stay of a guest UUID on a host: "where did VM X run on 1 March?" (domain.md 8).

    An open interval (``ended`` null) per (org, guest UUID) is the host that currently lists it
    last. Host names are copied so the timeline survives the host's deletion.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="guest_intervals")
    guest_uuid = models.CharField(max_length=64)
    host = models.ForeignKey(System, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="guest_intervals")
    host_name = models.CharField(max_length=255)
    host_hypervisor_id = models.CharField(max_length=255, blank=True)
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=64, blank=True, help_text="What recorded it, e.g. report id.")

    class Meta:
        ordering = ["org", "guest_uuid", "started", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "guest_uuid"], condition=Q(ended__isnull=True),
                name="guestinterval_one_open_uniq",
            ),
        ]
        indexes = [
            models.Index(fields=["org", "guest_uuid", "started"], name="guestinterval_timeline_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.guest_uuid} on {self.host_name} from {self.started}"
