"""The Candlepin-compatible hypervisor API used by virt-who (virt-who-api.md).

A wire adapter only: it authenticates, checks the org role, translates to and from the
services in ``hypervisors.reports``, and speaks Candlepin's JSON. No business rules here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, cast

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from hypervisors import reports
from hypervisors.models import Report
from orgs import content_access
from orgs.models import Organization, System
from orgs.services import has_role_perm, orgs_for_user
from sam import inputs
from sam.candlepin.auth import BadCredentials, Throttled, basic_user, refusal
from sam.candlepin.dto import owner_json
from sam.candlepin.http import API_VERSION, JSON, ApiRequest, error, json_response, query_bool, timestamp
from sam.ids import parse_uuid

# org_level_content_access: subscription-manager fetches the SCA certificate of consumers shown
# SCA (issue 14); clients in entitlement mode only list their serials once more at registration.
CAPABILITIES = ["hypervisors_async", "hypervisors_heartbeat", "derived_product",
                "instance_multiplier", "guest_limit", "org_level_content_access"]
MAX_PER_PAGE = 1000
P = ParamSpec("P")
View = Callable[Concatenate[ApiRequest, P], HttpResponse]
DjangoView = Callable[Concatenate[HttpRequest, P], HttpResponse]


class NotVisible(Exception):
    """The org or object does not exist for this caller: 404, never revealing which."""


def endpoint(*methods: str, auth: bool = True) -> Callable[[View[P]], DjangoView[P]]:
    """Method check, Basic authentication and Candlepin error answers for one view."""

    def wrap(view: View[P]) -> DjangoView[P]:
        @csrf_exempt
        @functools.wraps(view)
        def inner(request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
            if request.method not in methods:
                return error(request, 405, f"Method {request.method} is not allowed here.",
                             headers={"Allow": ", ".join(methods)})
            api_request = cast(ApiRequest, request)
            try:
                if auth:
                    api_request.api_user = basic_user(request)
                return view(api_request, *args, **kwargs)
            except (BadCredentials, Throttled) as exc:
                return refusal(request, exc)
            except NotVisible as exc:
                return error(request, 404, str(exc))
            except Answer as exc:
                return error(request, exc.status, str(exc))

        return inner

    return wrap


def _org(request: ApiRequest, key: str, *perms: str) -> Organization:
    org = Organization.objects.filter(key=key).first()
    if org is None or not any(has_role_perm(request.api_user, p, org) for p in perms):
        raise NotVisible(f"Organization with id {key} could not be found.")
    return org


def job_json(report: Report, heartbeat_answer: bool = False) -> JSON:
    """The job as Candlepin shows it. ``heartbeat_answer``: the answer of a heartbeat, which is
    recorded on the reporter's last report (retention) and answered as a heartbeat job."""
    heartbeat = heartbeat_answer or report.kind == Report.Kind.HEARTBEAT
    done = report.state in (Report.State.FINISHED, Report.State.FAILED, Report.State.CANCELED)
    result = (reports.heartbeat_message(report.org, report.reporter_id) if heartbeat_answer
              else report.result)
    return {
        "id": str(report.uuid),
        "key": "HypervisorHeartbeatUpdateJob" if heartbeat else "HypervisorUpdateJob",
        "name": "Hypervisor Heartbeat Update" if heartbeat else "Hypervisor Update",
        "group": None, "origin": report.origin, "executor": None, "principal": report.principal,
        "state": report.state, "previousState": None,
        "startTime": timestamp(report.started), "endTime": timestamp(report.finished),
        "attempts": report.attempts, "maxAttempts": 1,
        "statusPath": f"/jobs/{report.uuid}",
        "resultData": result if done else None,
        "result": result if isinstance(result, str) else None,
        "done": done, "owner": report.org.key,
        "created": timestamp(report.created), "updated": timestamp(report.updated),
    }


@endpoint("GET", auth=False)
def status(request: ApiRequest) -> HttpResponse:
    return json_response(request, {
        "result": True, "version": API_VERSION.split("-")[0], "release": "sam",
        "standalone": True, "mode": "NORMAL", "modeReason": None, "modeChangeTime": None,
        "timeUTC": timestamp(timezone.now()), "rulesSource": "default", "rulesVersion": "5.44",
        "managerCapabilities": CAPABILITIES,
    })


@endpoint("GET", auth=False)
def root(request: ApiRequest) -> HttpResponse:
    return json_response(request, [
        {"rel": rel, "href": f"/{rel}"}
        for rel in ("status", "owners", "users", "hypervisors", "jobs", "consumers",
                    "content_overrides", "activation_keys")
    ])


@endpoint("GET")
def user_owners(request: ApiRequest, username: str) -> HttpResponse:
    user = request.api_user
    if username != user.get_username() and not (user.is_staff or user.is_superuser):
        raise NotVisible(f"User {username} could not be found.")
    return json_response(request, [owner_json(o, content_access.wire_mode_for_request(o, request.META))
                                   for o in orgs_for_user(user).order_by("key")])


@endpoint("GET")
def owner(request: ApiRequest, key: str) -> HttpResponse:
    org = _org(request, key, "view_org")
    return json_response(request, owner_json(org, content_access.wire_mode_for_request(org, request.META)))


def _hypervisor_json(system: System, org: Organization) -> JSON:
    return {
        "id": str(system.pk), "uuid": str(system.uuid), "name": system.name,
        "type": {"label": system.type, "manifest": False},
        "hypervisorId": {"hypervisorId": system.hypervisor_id, "reporterId": system.reporter_id},
        "owner": {"key": org.key, "displayName": org.name, "href": f"/owners/{org.key}"},
        "lastCheckin": timestamp(system.last_checkin), "created": timestamp(system.registered_at),
        "updated": timestamp(system.updated), "facts": system.facts,
        "href": f"/consumers/{system.uuid}",
    }


def _page_args(request: HttpRequest) -> tuple[int, int] | None:
    """``page`` and ``per_page`` (capped); None when not positive whole numbers in range."""
    try:
        per_page = min(inputs.int_param(request.GET, "per_page", 100), MAX_PER_PAGE)
        # The OFFSET stays inside a 64-bit integer whatever the page.
        page = inputs.int_param(request.GET, "page", 1, maximum=inputs.INT64_MAX // MAX_PER_PAGE)
    except inputs.BadInput:
        return None
    return page, per_page


@endpoint("GET")
def owner_hypervisors(request: ApiRequest, key: str) -> HttpResponse:
    org = _org(request, key, "view_org")
    paging = _page_args(request)
    if paging is None:
        return error(request, 400, "page and per_page must be positive whole numbers in range.")
    page, per_page = paging
    hypervisors = System.objects.filter(org=org).hypervisors().order_by("name", "id")
    wanted = [i.strip().lower() for i in request.GET.getlist("hypervisor_id") if i.strip()]
    if wanted:
        hypervisors = hypervisors.filter(hypervisor_id__in=wanted)
    total = hypervisors.count()
    rows = hypervisors[(page - 1) * per_page: page * per_page]
    return json_response(request, [_hypervisor_json(s, org) for s in rows],
                         headers={"X-total-count": str(total)})


class Answer(Exception):
    """An early error answer from a helper (bad parameter, body too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _checkin_input(request: ApiRequest, owner_key: str) -> tuple[Organization, bool, bytes]:
    """Org (reporter role), ``create_missing`` and body of a check-in request."""
    org = _org(request, owner_key, "checkin_org")
    create_missing = query_bool(request, "create_missing", True)
    if create_missing is None:
        raise Answer(400, "create_missing must be true or false.")
    body = inputs.read_body(request, settings.SAM_REPORT_MAX_BYTES)
    if body is None:
        raise Answer(413, "The hypervisor report is larger than the configured limit of "
                          f"{settings.SAM_REPORT_MAX_BYTES} bytes.")
    return org, create_missing, body


@inputs.large_body("SAM_REPORT_MAX_BYTES")
@endpoint("POST")
def hypervisor_checkin(request: ApiRequest, owner_key: str) -> HttpResponse:
    org, create_missing, body = _checkin_input(request, owner_key)
    try:
        report = reports.accept_checkin(
            org, body, reporter_id=request.GET.get("reporter_id", ""),
            principal=request.api_user.get_username(), origin=settings.SAM_HOSTNAME,
            create_missing=create_missing)
    except reports.BadReport as exc:
        return error(request, 400, str(exc))
    except reports.Backpressure as exc:
        return error(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    report.org = org
    return json_response(request, job_json(report))


@endpoint("PUT")
def hypervisor_heartbeat(request: ApiRequest, owner_key: str) -> HttpResponse:
    org = _org(request, owner_key, "checkin_org")
    reporter_id = request.GET.get("reporter_id", "").strip()
    if not reporter_id:
        return error(request, 400, "reporter_id is absent or empty")
    report = reports.heartbeat(org, reporter_id, principal=request.api_user.get_username(),
                               origin=settings.SAM_HOSTNAME)
    return json_response(request, job_json(report, heartbeat_answer=True))


@inputs.large_body("SAM_REPORT_MAX_BYTES")
@endpoint("POST")
def legacy_checkin(request: ApiRequest) -> HttpResponse:
    key = request.GET.get("owner", "").strip()
    if not key:
        return error(request, 400, "The owner parameter is required.")
    org, create_missing, body = _checkin_input(request, key)
    try:
        report = reports.legacy_checkin(org, body, principal=request.api_user.get_username(),
                                        origin=settings.SAM_HOSTNAME, create_missing=create_missing)
    except reports.BadReport as exc:
        return error(request, 400, str(exc))
    except reports.Backpressure as exc:
        return error(request, 429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    return json_response(request, report.result)


@endpoint("GET")
def job(request: ApiRequest, job_id: str) -> HttpResponse:
    if not job_id.strip():
        return error(request, 400, "Job id must not be empty.")
    try:
        key = parse_uuid(job_id, "job")
    except Exception:  # noqa: BLE001 - a malformed id names no job
        raise NotVisible(f"Job with id {job_id} could not be found.") from None
    # The stored report and its diff can be megabytes: a poll reads neither.
    report = (Report.objects.select_related("org").defer("payload", "diff", "timeline")
              .filter(uuid=key).first())
    if report is None:  # a manifest import or undo job?
        from sam.candlepin import imports

        return imports.job_response(request, key)
    if not any(has_role_perm(request.api_user, p, report.org) for p in ("view_org", "checkin_org")):
        raise NotVisible(f"Job with id {job_id} could not be found.")
    return json_response(request, job_json(report))


@endpoint("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", auth=False)
def not_found(request: ApiRequest, path: str = "") -> HttpResponse:
    """Unknown paths answer like Candlepin does: JSON error body and request id header."""
    return error(request, 404, f"Resource /{path} is not served by this server.")
