"""REST API v1: organizations and their settings, members and roles, API tokens.

Durations are exposed as whole hours (``unmapped_window_hours``, ``unmapped_lifetime_hours``).
Writes carry an ``ETag`` (from ``updated``) and honour ``If-Match`` (412 when stale).
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.filters import OrderingFilter
from rest_framework.response import Response

from orgs import services
from orgs.models import ApiToken, Organization
from sam.api.base import OrgScopedViewSet, check_if_match, etag, org_path
from sam.ids import parse_uuid


class UuidLookupMixin:
    """``{uuid}`` in the URL: a malformed value is a 404 like any unknown object."""

    lookup_field = "uuid"

    def get_object(self):
        try:
            parse_uuid(self.kwargs[self.lookup_field])
        except DjangoValidationError:
            raise exceptions.NotFound("Not found.") from None
        return super().get_object()


# --- Organizations ----------------------------------------------------------------------------

class HoursField(serializers.IntegerField):
    """A duration as a whole number of hours."""

    def to_representation(self, value: timedelta) -> int:
        return int(value.total_seconds() // 3600)

    def run_validation(self, data=serializers.empty):
        hours = super().run_validation(data)  # the integer, range-checked
        return None if hours is None else timedelta(hours=hours)


class OrgSerializer(serializers.ModelSerializer):
    unmapped_window_hours = HoursField(source="unmapped_window", min_value=0, max_value=24 * 3650,
                                       required=False)
    unmapped_lifetime_hours = HoursField(source="unmapped_lifetime", min_value=1,
                                         max_value=24 * 3650, required=False)

    class Meta:
        model = Organization
        fields = ["key", "name", "autobind_enabled", "hypervisor_autobind_enabled",
                  "unmapped_window_hours", "unmapped_lifetime_hours", "content_access_mode",
                  "created", "updated"]
        read_only_fields = ["key", "created", "updated"]


class OrgCreateSerializer(OrgSerializer):
    key = serializers.CharField(max_length=255)

    class Meta(OrgSerializer.Meta):
        read_only_fields = ["created", "updated"]


class OrgViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Organizations the caller can view; staff create them; org admins change settings."""

    serializer_class = OrgSerializer
    lookup_field = "key"
    lookup_url_kwarg = "org_key"
    lookup_value_regex = "[^/]+"
    filter_backends = [OrderingFilter]
    ordering_fields = ["key", "name", "created"]
    ordering = ["key"]

    def get_queryset(self):
        return services.orgs_for_user(self.request.user).order_by("key")

    def get_serializer_class(self):
        return OrgCreateSerializer if self.action == "create" else OrgSerializer

    def retrieve(self, request, *args, **kwargs):
        org = self.get_object()
        return Response(OrgSerializer(org).data, headers={"ETag": etag(org)})

    @extend_schema(request=OrgCreateSerializer, responses={201: OrgSerializer})
    def create(self, request, *args, **kwargs):
        if not (request.user.is_staff or request.user.is_superuser):
            raise exceptions.PermissionDenied("Only operators create organizations.")
        serializer = OrgCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        org = services.create_org(data.pop("key"), data.pop("name"), **data)
        return Response(OrgSerializer(org).data, status=status.HTTP_201_CREATED,
                        headers={"ETag": etag(org)})

    @extend_schema(request=OrgSerializer, responses=OrgSerializer,
                   parameters=[OpenApiParameter("If-Match", str, OpenApiParameter.HEADER)])
    def partial_update(self, request, *args, **kwargs):
        org = self.get_object()
        if not services.has_role_perm(request.user, "admin_org", org):
            raise exceptions.PermissionDenied("Your role in this organization cannot change it.")
        check_if_match(request, org)
        serializer = OrgSerializer(org, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        org = services.update_org(org, **serializer.validated_data)
        return Response(OrgSerializer(org).data, headers={"ETag": etag(org)})


# --- Members ----------------------------------------------------------------------------------

class MemberSerializer(serializers.Serializer):
    """A member and its role; ``password`` only when the user is created here."""

    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=services.ROLES)
    password = serializers.CharField(write_only=True, required=False, allow_blank=False,
                                     style={"input_type": "password"})


class MemberChangeSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=services.ROLES)
    password = serializers.CharField(write_only=True, required=False, allow_blank=False,
                                     style={"input_type": "password"})


@org_path
class MemberViewSet(OrgScopedViewSet):
    """Members of an org and their role (viewers read, admins change)."""

    serializer_class = MemberSerializer
    lookup_field = "username"
    lookup_value_regex = "[^/]+"
    filter_backends: list = []

    def _check_password(self, username: str, data: dict) -> None:
        """An org admin sets a password only for a user it creates: an existing user may belong
        to other orgs (or be an operator), and resetting it would take that account over."""
        if data.get("password") and not self.request.user.is_staff and (
                get_user_model().objects.filter(username=username).exists()):
            raise serializers.ValidationError(
                {"password": ["Only operators set the password of an existing user."]})

    def _member(self, username: str) -> dict:
        role = dict(services.members(self.org)).get(username)
        if role is None:
            raise exceptions.NotFound(f"{username} is not a member of {self.org.key}.")
        return {"username": username, "role": role}

    def list(self, request, *args, **kwargs):
        rows = [{"username": u, "role": r} for u, r in services.members(self.org)]
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(MemberSerializer(page, many=True).data)

    def retrieve(self, request, *args, **kwargs):
        return Response(MemberSerializer(self._member(kwargs["username"])).data)

    @extend_schema(responses={201: MemberSerializer})
    def create(self, request, *args, **kwargs):
        serializer = MemberSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        self._check_password(data["username"], data)
        user = services.set_member_role(self.org, data["username"], data["role"],
                                        password=data.get("password"))
        return Response(MemberSerializer({"username": user.username, "role": data["role"]}).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=MemberChangeSerializer, responses=MemberSerializer)
    def partial_update(self, request, *args, **kwargs):
        username = self._member(kwargs["username"])["username"]
        serializer = MemberChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        self._check_password(username, data)
        services.set_member_role(self.org, username, data["role"], password=data.get("password"),
                                 create=False)
        return Response(MemberSerializer({"username": username, "role": data["role"]}).data)

    def destroy(self, request, *args, **kwargs):
        services.remove_member(self.org, self._member(kwargs["username"])["username"])
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- API tokens -------------------------------------------------------------------------------

class TokenSerializer(serializers.ModelSerializer):
    """A token as listed: never the plaintext (only its public prefix is stored)."""

    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "role", "prefix", "created", "created_by", "expires", "last_used",
                  "revoked"]
        read_only_fields = fields


class TokenCreateSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["name", "role", "expires"]
        extra_kwargs = {"expires": {"required": False}}
        validators: list = []  # uniqueness is checked (and reported) by the service


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The plaintext token: shown only once.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


@org_path
class TokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """API tokens of an org: created by admins, shown once, revoked (the row stays)."""

    queryset = ApiToken.objects.select_related("created_by")
    serializer_class = TokenSerializer
    lookup_value_regex = r"\d+"
    filter_backends = [OrderingFilter]
    ordering_fields = ["id", "name", "created", "expires", "last_used"]
    ordering = ["name", "id"]

    @extend_schema(request=TokenCreateSerializer, responses={201: NewTokenSerializer})
    def create(self, request, *args, **kwargs):
        serializer = TokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, plaintext = services.create_token(self.org, created_by=request.user,
                                                 **serializer.validated_data)
        token.token = plaintext
        return Response(NewTokenSerializer(token).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        services.revoke_token(self.org, self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


ROUTES = [
    (r"orgs", OrgViewSet, "org"),
    (r"orgs/(?P<org_key>[^/]+)/members", MemberViewSet, "org-member"),
    (r"orgs/(?P<org_key>[^/]+)/tokens", TokenViewSet, "org-token"),
]
