"""Organizations and their members' roles.

Roles are sets of django-guardian object permissions on the ``Organization`` (direct
foreign-key tables): ``admin`` = view + admin + check-in, ``viewer`` = view, ``reporter`` =
check-in (virt-who agents). A user has at most one role per org.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_objects_for_user, remove_perm

from orgs.auth import make_token
from orgs.models import ApiToken, Organization, OrganizationUserPermission
from sam.errors import ConfirmationRequired, NotFound

ROLE_PERMS: dict[str, tuple[str, ...]] = {
    "admin": ("view_org", "admin_org", "checkin_org"),
    "viewer": ("view_org",),
    "reporter": ("checkin_org",),
}
ROLES = tuple(ROLE_PERMS)
ALL_PERMS = ("view_org", "admin_org", "checkin_org")
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
SETTINGS = ("name", "autobind_enabled", "hypervisor_autobind_enabled", "unmapped_window",
            "unmapped_lifetime", "content_access_mode")


def require_org(org) -> Organization:
    """``org`` as a saved, existing Organization, or a ValidationError (services' first line)."""
    if not isinstance(org, Organization) or org.pk is None:
        raise ValidationError("Unknown organization.", code="unknown_org")
    if not Organization.objects.filter(pk=org.pk).exists():
        raise ValidationError(f"Organization {org.key!r} does not exist.", code="unknown_org")
    return org


def get_org(key: str) -> Organization:
    try:
        return Organization.objects.get(key=str(key))
    except Organization.DoesNotExist:
        raise ValidationError(f"Organization {key!r} does not exist.", code="unknown_org") from None


def _check_settings(values: dict) -> None:
    unknown = set(values) - set(SETTINGS)
    if unknown:
        raise ValidationError(f"Unknown organization settings: {', '.join(sorted(unknown))}.",
                              code="invalid")
    if "name" in values and not str(values["name"] or "").strip():
        raise ValidationError("name must not be empty.", code="invalid")
    for flag in ("autobind_enabled", "hypervisor_autobind_enabled"):
        if flag in values and not isinstance(values[flag], bool):
            raise ValidationError(f"{flag} must be true or false.", code="invalid")
    window = values.get("unmapped_window")
    if window is not None and (not isinstance(window, timedelta) or window < timedelta(0)):
        raise ValidationError("unmapped_window must be a duration of zero or more.", code="invalid")
    lifetime = values.get("unmapped_lifetime")
    if lifetime is not None and (not isinstance(lifetime, timedelta) or lifetime <= timedelta(0)):
        raise ValidationError("unmapped_lifetime must be a positive duration.", code="invalid")
    mode = values.get("content_access_mode")
    if mode is not None and mode not in Organization.ContentAccess.values:
        raise ValidationError(
            f"content_access_mode must be one of {', '.join(Organization.ContentAccess.values)}.",
            code="invalid",
        )


@transaction.atomic
def create_org(key: str, name: str, **settings) -> Organization:
    """Create an organization; ``key`` is its permanent address (Candlepin owner key)."""
    key = str(key or "").strip()
    if not KEY_RE.match(key):
        raise ValidationError(
            f"Organization key {key!r} is invalid: use letters, digits, '-' and '_' "
            "(1-255 characters, starting with a letter or digit).",
            code="invalid_key",
        )
    _check_settings({"name": name, **settings})
    if Organization.objects.filter(key=key).exists():
        raise ValidationError(f"Organization {key!r} already exists.", code="duplicate")
    return Organization.objects.create(key=key, name=str(name).strip(), **settings)


@transaction.atomic
def update_org(org: Organization, **settings) -> Organization:
    """Change an org's name or settings (autobind flags, unmapped window/lifetime, mode)."""
    _check_settings(settings)
    org = Organization.objects.select_for_update().get(pk=org.pk)
    mode = org.content_access_mode
    for name, value in settings.items():
        setattr(org, name, value.strip() if isinstance(value, str) else value)
    org.save()
    if org.content_access_mode != mode:  # consumers' certificates follow, in the worker
        from orgs import content_access

        content_access.org_changed(org)
    return org


def _role_check(role: str) -> None:
    if role not in ROLE_PERMS:
        raise ValidationError(
            f"Unknown role {role!r}; use one of {', '.join(ROLES)}.", code="unknown_role"
        )


class _Operator:
    """The operator at the command line (``manage.py addmember``): acts as a superuser."""

    is_authenticated = True
    is_active = True
    is_staff = True
    is_superuser = True
    pk = None

    def get_username(self) -> str:
        return "operator"


OPERATOR = _Operator()


def may_set_passwords(actor) -> bool:
    """Only a superuser (or the operator CLI) sets the password of an existing user: staff
    administer every org but must not take over accounts, org admins even less."""
    return bool(actor is not None and getattr(actor, "is_superuser", False)
                and getattr(actor, "is_active", False) and getattr(actor, "token", None) is None)


def _check_password(password: str, username: str) -> None:
    """Django's password validators, run the same way whether or not the name exists."""
    try:
        validate_password(password, get_user_model()(username=username))
    except ValidationError as exc:
        raise ValidationError({"password": list(exc.messages)}, code="invalid") from None


def tokens_lost(org: Organization, user, role: str | None) -> list[ApiToken]:
    """Live tokens ``user`` created in ``org`` that carry rights ``role`` (None: no membership)
    does not give: they are revoked when the member is removed or changes to ``role``. Staff and
    superusers keep every right, so their tokens stay."""
    if user is None or getattr(user, "pk", None) is None or user.is_staff or user.is_superuser:
        return []
    kept = set(ROLE_PERMS[role]) if role else set()
    lost_roles = [name for name, perms in ROLE_PERMS.items() if not set(perms) <= kept]
    return list(ApiToken.objects.filter(org=org, created_by=user, revoked__isnull=True,
                                        role__in=lost_roles)
                .exclude(expires__lte=timezone.now()).order_by("name", "id"))


def _revoke(tokens: list[ApiToken]) -> None:
    ApiToken.objects.filter(pk__in=[t.pk for t in tokens], revoked__isnull=True).update(
        revoked=timezone.now())


def _confirm_loss(org: Organization, username: str, lost: list[ApiToken], confirm: bool,
                  what: str) -> None:
    if lost and not confirm:
        names = ", ".join(f"{t.name} ({t.role})" for t in lost)
        raise ConfirmationRequired(
            f"{what} revokes {len(lost)} API token(s) {username} created in {org.key}: {names}. "
            "Confirm to go ahead.", tokens=lost)


@transaction.atomic
def set_member_role(org: Organization, username: str, role: str,
                    password: str | None = None, create: bool = True, *,
                    actor=None, confirm: bool = False) -> AbstractBaseUser:
    """Give ``username`` exactly ``role`` in ``org``; create the user when missing.

    The one rule for passwords and membership (UI, API and ``addmember`` all come here):
    ``password`` is validated with Django's validators for every name alike, and set only on a
    user created here -- or on an existing user when ``actor`` may set passwords
    (``may_set_passwords``). Otherwise a password given for an existing name is never applied
    and the answer is the same as for a new name (no username enumeration); with
    ``create=False`` (the caller names an existing member) it is refused instead. Tokens the
    user created that carry rights the new role lacks are revoked, only with ``confirm``
    (``ConfirmationRequired`` otherwise). Callers check that ``actor`` may administer ``org``.
    """
    _role_check(role)
    require_org(org)
    username = str(username or "").strip()
    if not username or len(username) > 150:
        raise ValidationError("username must be 1-150 characters.", code="invalid")
    if password:
        _check_password(password, username)
    User = get_user_model()
    user = User.objects.select_for_update().filter(username=username).first()
    if user is None:
        if not create:
            raise ValidationError(f"User {username!r} does not exist.", code="unknown_user")
        user = User(username=username)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.full_clean(exclude=["password"])
        user.save()
    else:
        if password and may_set_passwords(actor):
            user.set_password(password)
            user.save(update_fields=["password"])
        elif password and not create:
            raise ValidationError(
                {"password": ["Passwords apply only to new accounts; only an operator "
                              "(superuser) sets an existing user's password."]}, code="invalid")
        lost = tokens_lost(org, user, role)
        _confirm_loss(org, username, lost, confirm, f"Changing {username} to {role}")
        _revoke(lost)
    for perm in ALL_PERMS:
        if perm not in ROLE_PERMS[role]:
            remove_perm(perm, user, org)
    for perm in ROLE_PERMS[role]:
        assign_perm(perm, user, org)
    return user


@transaction.atomic
def remove_member(org: Organization, username: str, *, confirm: bool = False) -> list[ApiToken]:
    """End ``username``'s membership of ``org`` and revoke the tokens it created there (only with
    ``confirm`` when there are any: ``ConfirmationRequired``); returns the revoked tokens."""
    user = get_user_model().objects.filter(username=username).first()
    lost = tokens_lost(org, user, None)
    _confirm_loss(org, username, lost, confirm, f"Removing {username}")
    OrganizationUserPermission.objects.filter(
        content_object=org, user__username=username
    ).delete()
    _revoke(lost)
    return lost


def member_role(org: Organization, user) -> str | None:
    """The role ``user`` holds in ``org`` (from its permissions), or None."""
    perms = set(
        OrganizationUserPermission.objects.filter(content_object=org, user=user)
        .values_list("permission__codename", flat=True)
    )
    for role in ("admin", "viewer", "reporter"):
        if set(ROLE_PERMS[role]) <= perms:
            return role
    return None


def members(org: Organization) -> list[tuple[str, str]]:
    """``(username, role)`` of every member, by username."""
    rows = (OrganizationUserPermission.objects.filter(content_object=org)
            .values_list("user__username", "permission__codename"))
    perms: dict[str, set[str]] = {}
    for username, codename in rows:
        perms.setdefault(username, set()).add(codename)
    result = []
    for username in sorted(perms):
        role = next((r for r in ("admin", "viewer", "reporter")
                     if set(ROLE_PERMS[r]) <= perms[username]), None)
        if role:
            result.append((username, role))
    return result


def orgs_for_user(user, perm: str = "view_org"):
    """Organizations where ``user`` holds ``perm``; staff see every org; a token its own org."""
    if not user or not user.is_authenticated or not user.is_active:
        return Organization.objects.none()
    token = getattr(user, "token", None)
    if token is not None:
        if perm not in ROLE_PERMS[token.role]:
            return Organization.objects.none()
        return Organization.objects.filter(pk=token.org_id)
    if user.is_superuser or user.is_staff:
        return Organization.objects.all()
    return get_objects_for_user(user, f"orgs.{perm}", klass=Organization, accept_global_perms=False)


def has_role_perm(user, perm: str, org: Organization) -> bool:
    """Whether ``user`` holds ``perm`` (view_org / admin_org / checkin_org) on ``org``."""
    if not user or not user.is_authenticated or not user.is_active:
        return False
    token = getattr(user, "token", None)
    if token is not None:  # a token acts with its own role in its own org only
        return token.org_id == org.id and perm in ROLE_PERMS[token.role]
    if user.is_superuser or user.is_staff:
        return True
    return OrganizationUserPermission.objects.filter(
        content_object=org, user=user, permission__codename=perm
    ).exists()


# --- API tokens -------------------------------------------------------------------------------

@transaction.atomic
def create_token(org: Organization, name: str, role: str, created_by=None,
                 expires: datetime | None = None, reporter_id: str = "") -> tuple[ApiToken, str]:
    """Create a token; the plaintext is returned once and never stored. ``reporter_id``: the
    virt-who reporter a reporter token is for (its expiry then shows in reporter health)."""
    _role_check(role)
    name = str(name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError("token name must be 1-100 characters.", code="invalid")
    if expires is not None:
        if not isinstance(expires, datetime) or timezone.is_naive(expires):
            raise ValidationError("expires must be a date-time with a time zone.", code="invalid")
        if expires <= timezone.now():
            raise ValidationError("expires must be in the future.", code="invalid")
    if ApiToken.objects.filter(org=org, name=name).exists():
        raise ValidationError(f"A token named {name!r} already exists in {org.key}.",
                              code="duplicate")
    principal_token = getattr(created_by, "token", None)
    if principal_token is not None:  # made with a token: it belongs to that token's creator
        created_by = principal_token.created_by
    plaintext, prefix, digest = make_token()
    token = ApiToken.objects.create(org=org, name=name, role=role, prefix=prefix, digest=digest,
                                    created_by=created_by if getattr(created_by, "pk", None) else None,
                                    expires=expires, reporter_id=str(reporter_id or "")[:255])
    return token, plaintext


def reporter_tokens(org: Organization, now: datetime | None = None):
    """The org's reporter tokens still usable (not revoked, not expired), newest first."""
    now = now or timezone.now()
    return (ApiToken.objects.filter(org=org, role="reporter", revoked__isnull=True)
            .exclude(expires__lte=now).order_by("-created", "-id"))


def assign_reporter(token: ApiToken, reporter_id: str) -> None:
    """Record that a reused reporter token now also serves ``reporter_id`` (when it served
    none yet: a token reported by several reporters keeps its first)."""
    if not token.reporter_id:
        token.reporter_id = str(reporter_id)[:255]
        token.save(update_fields=["reporter_id"])


def revoke_token(org: Organization, token_id: int) -> ApiToken:
    token = ApiToken.objects.filter(org=org, pk=token_id).first()
    if token is None:
        raise NotFound(f"Token {token_id} does not exist in organization {org.key}.")
    if token.revoked is None:
        token.revoked = timezone.now()
        token.save(update_fields=["revoked"])
    return token
