"""The Candlepin-compatible hypervisor API used by virt-who (virt-who-api.md).

A wire adapter only: it authenticates, checks the org role, translates to and from the
services in ``hypervisors.reports``, and speaks Candlepin's JSON. No business rules here.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from hypervisors import reports
from hypervisors.models import Report
from orgs.models import Organization, System
from orgs.services import has_role_perm, orgs_for_user
from sam.candlepin.auth import BadCredentials, basic_user
from sam.candlepin.http import API_VERSION, error, json_response, query_bool, timestamp
from sam.ids import parse_uuid

CAPABILITIES = ["hypervisors_async", "hypervisors_heartbeat", "derived_product",
                "instance_multiplier", "guest_limit"]
MAX_PER_PAGE = 1000


class NotVisible(Exception):
    """The org or object does not exist for this caller: 404, never revealing which."""


def endpoint(*methods: str, auth: bool = True):
    """Method check, Basic authentication and Candlepin error answers for one view."""

    def wrap(view):
        @csrf_exempt
        @functools.wraps(view)
        def inner(request, *args, **kwargs):
            if request.method not in methods:
                return error(request, 405, f"Method {request.method} is not allowed here.",
                             headers={"Allow": ", ".join(methods)})
            try:
                if auth:
                    request.api_user = basic_user(request)
                return view(request, *args, **kwargs)
            except BadCredentials as exc:
                return error(request, 401, str(exc), headers={"WWW-Authenticate": 'Basic realm="sam"'})
            except NotVisible as exc:
                return error(request, 404, str(exc))
            except Answer as exc:
                return error(request, exc.status, str(exc))

        return inner

    return wrap


def _org(request, key: str, *perms: str) -> Organization:
    org = Organization.objects.filter(key=key).first()
    if org is None or not any(has_role_perm(request.api_user, p, org) for p in perms):
        raise NotVisible(f"Organization with id {key} could not be found.")
    return org


def _owner_json(org: Organization) -> dict:
    return {
        "id": str(org.pk), "key": org.key, "displayName": org.name,
        "contentAccessMode": org.content_access_mode,
        "contentAccessModeList": "entitlement,org_environment",
        "autobindDisabled": not org.autobind_enabled,
        "autobindHypervisorDisabled": not org.hypervisor_autobind_enabled,
        "created": timestamp(org.created), "updated": timestamp(org.updated),
        "href": f"/owners/{org.key}",
    }


def job_json(report: Report) -> dict:
    heartbeat = report.kind == Report.Kind.HEARTBEAT
    done = report.state in (Report.State.FINISHED, Report.State.FAILED, Report.State.CANCELED)
    return {
        "id": str(report.uuid),
        "key": "HypervisorHeartbeatUpdateJob" if heartbeat else "HypervisorUpdateJob",
        "name": "Hypervisor Heartbeat Update" if heartbeat else "Hypervisor Update",
        "group": None, "origin": report.origin, "executor": None, "principal": report.principal,
        "state": report.state, "previousState": None,
        "startTime": timestamp(report.started), "endTime": timestamp(report.finished),
        "attempts": report.attempts, "maxAttempts": 1,
        "statusPath": f"/jobs/{report.uuid}",
        "resultData": report.result if done else None,
        "result": report.result if isinstance(report.result, str) else None,
        "done": done, "owner": report.org.key,
        "created": timestamp(report.created), "updated": timestamp(report.updated),
    }


@endpoint("GET", auth=False)
def status(request):
    return json_response(request, {
        "result": True, "version": API_VERSION.split("-")[0], "release": "sam",
        "standalone": True, "mode": "NORMAL", "modeReason": None, "modeChangeTime": None,
        "timeUTC": timestamp(timezone.now()), "rulesSource": "default", "rulesVersion": "5.44",
        "managerCapabilities": CAPABILITIES,
    })


@endpoint("GET", auth=False)
def root(request):
    return json_response(request, [
        {"rel": rel, "href": f"/{rel}"} for rel in ("status", "owners", "users", "hypervisors", "jobs")
    ])


@endpoint("GET")
def user_owners(request, username: str):
    user = request.api_user
    if username != user.get_username() and not (user.is_staff or user.is_superuser):
        raise NotVisible(f"User {username} could not be found.")
    return json_response(request, [_owner_json(o) for o in orgs_for_user(user).order_by("key")])


@endpoint("GET")
def owner(request, key: str):
    return json_response(request, _owner_json(_org(request, key, "view_org")))


def _hypervisor_json(system: System, org: Organization) -> dict:
    return {
        "id": str(system.pk), "uuid": str(system.uuid), "name": system.name,
        "type": {"label": system.type, "manifest": False},
        "hypervisorId": {"hypervisorId": system.hypervisor_id, "reporterId": system.reporter_id},
        "owner": {"key": org.key, "displayName": org.name, "href": f"/owners/{org.key}"},
        "lastCheckin": timestamp(system.last_checkin), "created": timestamp(system.registered_at),
        "updated": timestamp(system.updated), "facts": system.facts,
        "href": f"/consumers/{system.uuid}",
    }


def _page_args(request) -> tuple[int, int] | None:
    try:
        page = int(request.GET.get("page", "1"))
        per_page = int(request.GET.get("per_page", "100"))
    except ValueError:
        return None
    if page < 1 or per_page < 1:
        return None
    return page, min(per_page, MAX_PER_PAGE)


@endpoint("GET")
def owner_hypervisors(request, key: str):
    org = _org(request, key, "view_org")
    paging = _page_args(request)
    if paging is None:
        return error(request, 400, "page and per_page must be positive integers.")
    page, per_page = paging
    hypervisors = System.objects.filter(org=org, hypervisor_id__isnull=False).order_by("name", "id")
    wanted = [i.strip().lower() for i in request.GET.getlist("hypervisor_id") if i.strip()]
    if wanted:
        hypervisors = hypervisors.filter(hypervisor_id__in=wanted)
    total = hypervisors.count()
    rows = hypervisors[(page - 1) * per_page: page * per_page]
    return json_response(request, [_hypervisor_json(s, org) for s in rows],
                         headers={"X-total-count": str(total)})


def _body(request) -> bytes | None:
    """The request body, or None when it exceeds the configured limit (413)."""
    limit = settings.SAM_REPORT_MAX_BYTES
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            return None
    except ValueError:
        return None
    try:
        return request.body
    except RequestDataTooBig:
        return None


class Answer(Exception):
    """An early error answer from a helper (bad parameter, body too large)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _checkin_input(request, owner_key: str) -> tuple[Organization, bool, bytes]:
    """Org (reporter role), ``create_missing`` and body of a check-in request."""
    org = _org(request, owner_key, "checkin_org")
    create_missing = query_bool(request, "create_missing", True)
    if create_missing is None:
        raise Answer(400, "create_missing must be true or false.")
    body = _body(request)
    if body is None:
        raise Answer(413, "The hypervisor report is larger than the configured limit of "
                          f"{settings.SAM_REPORT_MAX_BYTES} bytes.")
    return org, create_missing, body


@endpoint("POST")
def hypervisor_checkin(request, owner_key: str):
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
def hypervisor_heartbeat(request, owner_key: str):
    org = _org(request, owner_key, "checkin_org")
    reporter_id = request.GET.get("reporter_id", "").strip()
    if not reporter_id:
        return error(request, 400, "reporter_id is absent or empty")
    report = reports.heartbeat(org, reporter_id, principal=request.api_user.get_username(),
                               origin=settings.SAM_HOSTNAME)
    return json_response(request, job_json(report))


@endpoint("POST")
def legacy_checkin(request):
    key = request.GET.get("owner", "").strip()
    if not key:
        return error(request, 400, "The owner parameter is required.")
    org, create_missing, body = _checkin_input(request, key)
    try:
        report = reports.legacy_checkin(org, body, principal=request.api_user.get_username(),
                                        origin=settings.SAM_HOSTNAME, create_missing=create_missing)
    except reports.BadReport as exc:
        return error(request, 400, str(exc))
    return json_response(request, report.result)


@endpoint("GET")
def job(request, job_id: str):
    if not job_id.strip():
        return error(request, 400, "Job id must not be empty.")
    try:
        key = parse_uuid(job_id, "job")
    except Exception:  # noqa: BLE001 - a malformed id names no job
        raise NotVisible(f"Job with id {job_id} could not be found.") from None
    # The stored report and its diff can be megabytes: a poll reads neither.
    report = Report.objects.select_related("org").defer("payload", "diff").filter(uuid=key).first()
    if report is None or not any(has_role_perm(request.api_user, p, report.org)
                                 for p in ("view_org", "checkin_org")):
        raise NotVisible(f"Job with id {job_id} could not be found.")
    return json_response(request, job_json(report))


@endpoint("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", auth=False)
def not_found(request, path: str = ""):
    """Unknown paths answer like Candlepin does: JSON error body and request id header."""
    return error(request, 404, f"Resource /{path} is not served by this server.")
