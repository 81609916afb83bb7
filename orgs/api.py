"""REST API v1: organizations and their settings, members and roles, API tokens.

Durations are exposed as whole hours (``unmapped_window_hours``, ``unmapped_lifetime_hours``).
Writes carry an ``ETag`` (from ``updated``) and honour ``If-Match`` (412 when stale).
"""

from __future__ import annotations

from datetime import timedelta

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.filters import OrderingFilter
from rest_framework.response import Response

from hypervisors.reporters import token_impact
from orgs import services
from orgs.models import ApiToken, Organization
from sam.api.base import OrgScopedViewSet, check_if_match, etag, org_path
from sam.errors import ConfirmationRequired

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
    """A member and its role; ``password`` applies only to an account created here."""

    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=services.ROLES)
    password = serializers.CharField(
        write_only=True, required=False, allow_blank=False, style={"input_type": "password"},
        help_text="Only for a new account (Django's password validators apply); never applied to "
                  "an existing user, and the answer is the same either way. An operator "
                  "(superuser) may set an existing user's password.")


class MemberChangeSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=services.ROLES)
    password = serializers.CharField(write_only=True, required=False, allow_blank=False,
                                     style={"input_type": "password"},
                                     help_text="Operators (superusers) only.")


CONFIRM = OpenApiParameter(
    "confirm", bool, OpenApiParameter.QUERY, required=False,
    description="Required (true) when the change revokes API tokens the member created; "
                "without it such a change answers 409 listing the tokens and the virt-who "
                "reporters that would stop working.")


NEEDS_CONFIRM = OpenApiResponse(
    description="Not done: the change would revoke API tokens. `error.tokens` lists them (with "
                "the reporter ids seen with each), `error.reporters` the virt-who reporters that "
                "would stop working; repeat with `confirm=true`.")


def _confirmed(request) -> bool:
    raw = request.query_params.get("confirm")
    if raw is None or raw == "":
        return False
    value = str(raw).strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no"}:
        return False
    raise serializers.ValidationError({"confirm": ["Must be true or false."]})


def _confirmation_needed(org, exc: ConfirmationRequired) -> Response:
    """409 with what a confirmation would revoke and which reporters would stop."""
    impact = token_impact(org, exc.tokens)
    return Response({"error": {"code": "confirmation_required", "message": exc.message, **impact}},
                    status=status.HTTP_409_CONFLICT)


@org_path
class MemberViewSet(OrgScopedViewSet):
    """Members of an org and their role (viewers read, admins change)."""

    serializer_class = MemberSerializer
    lookup_field = "username"
    lookup_value_regex = "[^/]+"
    filter_backends: list = []

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

    @extend_schema(parameters=[CONFIRM], responses={201: MemberSerializer, 409: NEEDS_CONFIRM})
    def create(self, request, *args, **kwargs):
        serializer = MemberSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            user = services.set_member_role(self.org, data["username"], data["role"],
                                            password=data.get("password"), actor=request.user,
                                            confirm=_confirmed(request))
        except ConfirmationRequired as exc:
            return _confirmation_needed(self.org, exc)
        return Response(MemberSerializer({"username": user.username, "role": data["role"]}).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=MemberChangeSerializer, parameters=[CONFIRM],
                   responses={200: MemberSerializer, 409: NEEDS_CONFIRM})
    def partial_update(self, request, *args, **kwargs):
        username = self._member(kwargs["username"])["username"]
        serializer = MemberChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            services.set_member_role(self.org, username, data["role"], password=data.get("password"),
                                     create=False, actor=request.user, confirm=_confirmed(request))
        except ConfirmationRequired as exc:
            return _confirmation_needed(self.org, exc)
        return Response(MemberSerializer({"username": username, "role": data["role"]}).data)

    @extend_schema(parameters=[CONFIRM], responses={204: None, 409: NEEDS_CONFIRM})
    def destroy(self, request, *args, **kwargs):
        username = self._member(kwargs["username"])["username"]
        try:
            services.remove_member(self.org, username, confirm=_confirmed(request))
        except ConfirmationRequired as exc:
            return _confirmation_needed(self.org, exc)
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
    """API tokens of an org, for its admins only (names and roles say who can act on the org):
    created, shown once, revoked (the row stays)."""

    queryset = ApiToken.objects.select_related("created_by")
    serializer_class = TokenSerializer
    lookup_value_regex = r"\d+"
    filter_backends = [OrderingFilter]
    ordering_fields = ["id", "name", "created", "expires", "last_used"]
    ordering = ["name", "id"]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not services.has_role_perm(request.user, "admin_org", self.org):
            raise exceptions.PermissionDenied("Only admins of this organization see its tokens.")

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
