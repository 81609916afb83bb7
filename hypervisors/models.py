"""The host→guest mapping reported by virt-who, and each guest UUID's host timeline."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from orgs.models import Organization, System
from sam.ids import new_id


class GuestId(models.Model):
    """"Host H reports guest UUID G" (Candlepin GuestId). ``guest_uuid`` is lower-cased.

    The current host of a guest UUID is the host of its most recently ``updated`` row.
    """

    # No single-column indexes: guestid_org_guest_upd_idx and the (host, guest_uuid) unique
    # constraint lead with these columns; fewer indexes make a 20,000-row report cheaper.
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="guest_ids",
                            db_index=False)
    host = models.ForeignKey(System, on_delete=models.CASCADE, related_name="guest_ids",
                             db_index=False)
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

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="guest_intervals",
                            db_index=False)  # guestinterval_timeline_idx leads with org
    guest_uuid = models.CharField(max_length=64)
    host = models.ForeignKey(System, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="guest_intervals")
    host_name = models.CharField(max_length=255)
    host_hypervisor_id = models.CharField(max_length=255, blank=True)
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=64, blank=True, help_text="What recorded it, e.g. report id.")
    report = models.ForeignKey("Report", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="guest_intervals")

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


# A report's large columns, and its successor's: what list and detail pages leave unread.
REPORT_BLOBS = ("payload", "timeline", "superseded_by__payload", "superseded_by__timeline")


class ReportQuerySet(models.QuerySet):
    def touching(self, host: System):
        """Reports that created or updated ``host`` or moved a guest onto it: the hypervisor's
        history. The diff keeps host names in JSON arrays; a portable text match of the quoted
        name (as PostgreSQL and SQLite print it) stands for array containment."""
        import json

        from django.db.models.fields.json import KT

        touched = GuestHostInterval.objects.filter(host=host, report__isnull=False).values("report_id")
        match = Q(id__in=touched)
        for needle in {json.dumps(host.name), json.dumps(host.name, ensure_ascii=False)}:
            match |= Q(created_text__contains=needle) | Q(updated_text__contains=needle)
        return (self.filter(org_id=host.org_id)
                .alias(created_text=KT("diff__hypervisors__created"),
                       updated_text=KT("diff__hypervisors__updated"))
                .filter(match))


class Report(models.Model):
    """One virt-who upload and its processing job (Candlepin ``HypervisorUpdateJob``).

    The row is created in the request and the client polls it; the raw report is kept
    compressed with its hash, so a lost broker message or a killed worker loses nothing.
    """

    class State(models.TextChoices):
        # Only these six words: virt-who reads any other state as a failure. sam's own path:
        # CREATED (accepted) → RUNNING (claimed by a worker, committed) → FINISHED or FAILED
        # (hypervisors/reports.py apply_report). WAITING and CANCELED are Candlepin's words,
        # kept valid on the wire and in the check constraint, never set by sam.
        CREATED = "CREATED"
        WAITING = "WAITING"
        RUNNING = "RUNNING"
        FINISHED = "FINISHED"
        FAILED = "FAILED"
        CANCELED = "CANCELED"

    class Kind(models.TextChoices):
        CHECKIN = "checkin", "Hypervisor check-in"
        HEARTBEAT = "heartbeat", "Heartbeat"
        LEGACY = "legacy", "Synchronous check-in (legacy)"

    OPEN_STATES = (State.CREATED, State.WAITING, State.RUNNING)

    uuid = models.UUIDField(default=new_id, unique=True, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="reports")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHECKIN)
    reporter_id = models.CharField(max_length=255, blank=True, default="")
    principal = models.CharField(max_length=255, blank=True)
    origin = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CREATED)
    payload = models.BinaryField(null=True, blank=True, help_text="zlib-compressed JSON body")
    payload_hash = models.CharField(max_length=64, blank=True)
    payload_size = models.PositiveIntegerField(default=0)
    create_missing = models.BooleanField(default=True)
    hypervisor_count = models.PositiveIntegerField(default=0)
    guest_count = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True, help_text="resultData as clients see it")
    diff = models.JSONField(null=True, blank=True, help_text="hypervisors created/updated, "
                            "guests added/removed/moved")
    superseded_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="superseded")
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="Internal error text (operators only; "
                             "clients see a generic message with its log reference)")
    # The identical-report shortcut (virt-who-api.md): an applied report stamps the hypervisors
    # it wrote (System.written_by_report); it may answer an identical report while ``written``
    # of them still carry its id. A row answering identical reports points at that report.
    written = models.PositiveIntegerField(null=True, blank=True,
                                          help_text="hypervisors this report wrote")
    same_as = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", help_text="the applied report this one repeats")
    # Retention (performance.md R10): identical re-reports and heartbeats update a row instead
    # of adding one.
    repeats = models.PositiveIntegerField(default=0, help_text="identical reports and "
                                          "heartbeats answered by this row after the first")
    last_seen = models.DateTimeField(null=True, blank=True,
                                     help_text="the last of those repeats")
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # A large report writes its host timeline after its own transaction (hypervisors/ingest.py,
    # "Deferred timeline"): what is still to be written is kept here until then.
    timeline = models.BinaryField(null=True, blank=True, editable=False,
                                  help_text="zlib-compressed host timeline entries not yet written")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = ReportQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["CREATED", "WAITING", "RUNNING", "FINISHED", "FAILED",
                                       "CANCELED"]),
                name="report_state_valid",
            ),
        ]
        indexes = [
            # Open jobs: coalescing per (org, reporter), backpressure count, the re-enqueue sweep.
            models.Index(fields=["org", "reporter_id", "created"], name="report_open_idx",
                         condition=Q(state__in=["CREATED", "WAITING", "RUNNING"])),
            # Last applied report of a reporter (dedup by hash) and the report list.
            models.Index(fields=["org", "reporter_id", "kind", "-finished"],
                         name="report_reporter_finished_idx"),
            models.Index(fields=["org", "-created"], name="report_org_created_idx"),
            # Retention: finished reports whose payload is still stored (a few days' worth).
            models.Index(fields=["finished"], name="report_payload_finished_idx",
                         condition=Q(payload__isnull=False)),
            # Host timelines still to be written (a few rows at most, for a second or so).
            models.Index(fields=["org", "id"], name="report_timeline_pending_idx",
                         condition=Q(timeline__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.uuid} ({self.state})"

    @property
    def client_error(self) -> str:
        """What clients may see of a failure: the job's generic message with its log
        reference, never the internal ``error`` text (operators read that in the admin)."""
        if not self.error:
            return ""
        message = self.result.get("message") if isinstance(self.result, dict) else None
        return message or "The report could not be applied because of an internal error."
