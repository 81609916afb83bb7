"""Candlepin-compatible manifest imports, as Katello/Satellite call them (manifest.md 3, 9):
``POST /owners/{key}/imports/async`` (multipart, ``force=`` repeatable) answers a job that
``GET /jobs/{id}`` serves like a check-in job; ``GET /owners/{key}/imports`` lists the import
records; ``DELETE /owners/{key}/imports`` undoes the import as a job. A wire adapter only: the
rules are in ``subscriptions.manifest.importer``.
"""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParserError

from orgs.models import Organization
from orgs.services import has_role_perm
from sam import inputs
from sam.candlepin.http import JSON, ApiRequest, error, json_response, timestamp
from sam.candlepin.views import NotVisible, _org, endpoint
from subscriptions.manifest import http, importer
from subscriptions.manifest.reader import InvalidManifest
from subscriptions.models import ManifestImport

MAX_RECORDS = 100


def _admin(request: ApiRequest, key: str) -> Organization:
    org = _org(request, key, "view_org", "admin_org")
    if not has_role_perm(request.api_user, "admin_org", org):
        raise PermissionError(f"Importing into organization {key} needs its admin role.")
    return org


def record_json(record: ManifestImport) -> JSON:
    upstream = record.upstream or {}
    return {
        "id": str(record.uuid), "status": record.status, "statusMessage": record.message,
        "fileName": record.file_name or None, "generatedBy": record.generated_by or None,
        "generatedDate": timestamp(record.generated_date),
        "upstreamConsumer": {"uuid": upstream.get("uuid"), "name": upstream.get("name") or None,
                             "type": {"label": upstream.get("type") or None},
                             "ownerId": upstream.get("owner_key") or None,
                             "contentAccessMode": upstream.get("content_access_mode") or None,
                             } if upstream else None,
        "conflicts": [c["key"] for c in record.conflicts],
        "created": timestamp(record.created), "updated": timestamp(record.updated),
    }


def job_json(record: ManifestImport) -> JSON:
    """A manifest job in the shape of ``sam.candlepin.views.job_json`` (a check-in job)."""
    done = record.state in (ManifestImport.State.FINISHED, ManifestImport.State.FAILED)
    undo = record.kind == ManifestImport.Kind.DELETE
    result: JSON | str | None
    if record.state == ManifestImport.State.FINISHED:
        result = record_json(record)
    else:
        result = record.message or None
    return {
        "id": str(record.uuid), "key": "UndoImportsJob" if undo else "ImportJob",
        "name": "Undo Imports" if undo else "Import Manifest", "group": None,
        "origin": settings.SAM_HOSTNAME, "executor": None, "principal": record.principal,
        "state": record.state, "previousState": None,
        "startTime": timestamp(record.started), "endTime": timestamp(record.finished),
        "attempts": 1 if record.started else 0, "maxAttempts": 1, "statusPath": f"/jobs/{record.uuid}",
        "resultData": result if done else None, "result": record.message or None,
        "done": done, "owner": record.org.key,
        "created": timestamp(record.created), "updated": timestamp(record.updated),
    }


def job_response(request: ApiRequest, key: UUID) -> HttpResponse:
    """``GET /jobs/{id}`` for a manifest job (``views.job`` asks here when no report matches)."""
    record = ManifestImport.objects.select_related("org").defer("payload").filter(uuid=key).first()
    if record is None or not has_role_perm(request.api_user, "view_org", record.org):
        raise NotVisible(f"Job with id {key} could not be found.")
    return json_response(request, job_json(record))


@inputs.large_body(http.max_request_bytes)
@endpoint("POST")
def import_async(request: ApiRequest, key: str) -> HttpResponse:
    try:
        org = _admin(request, key)
        http.check_length(request)
        upload = http.pick_file(request.FILES)
        data = http.read_file(upload)
        record = importer.accept(org, data, force=request.GET.getlist("force"),
                                 file_name=upload.name or "", principal=request.api_user.get_username())
    except PermissionError as exc:
        return error(request, 403, str(exc))
    except http.TooLarge as exc:
        return error(request, 413, str(exc))
    except InvalidManifest as exc:
        return error(request, 400, exc.message)
    except ValidationError as exc:
        return error(request, 400, " ".join(exc.messages))
    except MultiPartParserError as exc:
        return error(request, 400, f"The multipart body cannot be read: {exc}")
    record.refresh_from_db()
    return json_response(request, job_json(record))


@endpoint("GET", "DELETE")
def imports(request: ApiRequest, key: str) -> HttpResponse:
    if request.method == "GET":
        org = _org(request, key, "view_org")
        records = (ManifestImport.objects.filter(org=org).exclude(status="").defer("payload")
                   .select_related("org").order_by("-created", "-id")[:MAX_RECORDS])
        return json_response(request, [record_json(r) for r in records])
    try:
        org = _admin(request, key)
        record = importer.accept_delete(org, principal=request.api_user.get_username())
    except PermissionError as exc:
        return error(request, 403, str(exc))
    except importer.NoManifest:
        return error(request, 404, f"Owner {key} has no imports to undo.")
    record.refresh_from_db()
    return json_response(request, job_json(record))
