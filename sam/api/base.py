"""The base of every org-scoped API view: the org comes from the URL and is checked first.

An org the caller may not see answers 404 (never revealing it exists); a member without the
admin role gets 403 on writes. Querysets are filtered by that org before anything else.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, permissions, viewsets

from orgs.models import Organization
from orgs.services import has_role_perm
from sam import inputs
from sam.ids import parse_uuid

SAFE = permissions.SAFE_METHODS
ORG_KEY = OpenApiParameter("org_key", str, OpenApiParameter.PATH, description="Organization key.")
org_path = extend_schema(parameters=[ORG_KEY])  # decorate org-scoped viewsets for the schema


class OrgScopedMixin:
    org_kwarg = "org_key"
    read_perm = "view_org"
    write_perm = "admin_org"
    org_field = "org"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        key = kwargs.get(self.org_kwarg)
        org = Organization.objects.filter(key=key).first()
        if org is None or not has_role_perm(request.user, self.read_perm, org):
            raise exceptions.NotFound(f"Organization {key} not found.")
        if request.method not in SAFE and not has_role_perm(request.user, self.write_perm, org):
            raise exceptions.PermissionDenied("Your role in this organization cannot change it.")
        self.org = org

    def get_queryset(self):
        return super().get_queryset().filter(**{self.org_field: self.org})


class OrgScopedViewSet(OrgScopedMixin, viewsets.GenericViewSet):
    """Generic org-scoped viewset; mix in the list/retrieve/... actions you serve."""


def etag(obj) -> str:
    """A strong validator from the row's ``updated`` time (changes on every save)."""
    return f'"{int(obj.updated.timestamp() * 1_000_000)}"'


def check_if_match(request, obj) -> None:
    """Optimistic concurrency: a write carrying ``If-Match`` must name the current version."""
    wanted = request.headers.get("If-Match")
    if wanted and wanted.strip() not in ("*", etag(obj)):
        raise PreconditionFailed()


class PreconditionFailed(exceptions.APIException):
    status_code = 412
    default_detail = "The object changed since you read it (If-Match); reload and try again."
    default_code = "precondition_failed"


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is larger than this endpoint's limit."
    default_code = "too_large"


class LargeBodyMixin:
    """A view that takes bodies beyond Django's limit, up to ``sam_body_limit`` bytes (the
    input middleware lets them through, sam/inputs.py): the body is read once the caller is
    authenticated, before DRF parses it."""

    sam_body_limit: int

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if inputs.read_body(request._request, self.sam_body_limit) is None:
            raise RequestTooLarge()


class UuidLookupMixin:
    """``{uuid}`` in the URL: a malformed value is a 404 like any unknown object."""

    lookup_field = "uuid"

    def get_object(self):
        try:
            parse_uuid(self.kwargs[self.lookup_field])
        except DjangoValidationError:
            raise exceptions.NotFound("Not found.") from None
        return super().get_object()
