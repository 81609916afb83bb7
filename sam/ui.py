"""Shared pieces of the server-rendered web UI: the org-scoped page base and the home page.

Every page lives under ``/o/<org_key>/``. An org the user may not see is a 404 (as in the
API); viewers get every page read-only, a POST needs the admin role (403 otherwise).
"""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect

from orgs.models import Organization
from orgs.services import has_role_perm, member_role, orgs_for_user


class OrgPageMixin(LoginRequiredMixin):
    """Resolves ``self.org`` from the URL and the caller's role; use before any Django view."""

    admin_required = False  # True: even GET needs the admin role (e.g. token management)

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        org = Organization.objects.filter(key=kwargs.get("org_key")).first()
        if org is None or not has_role_perm(request.user, "view_org", org):
            raise Http404("No such organization.")
        self.org = org
        self.can_admin = has_role_perm(request.user, "admin_org", org)
        if (request.method not in ("GET", "HEAD", "OPTIONS") or self.admin_required) \
                and not self.can_admin:
            raise PermissionDenied("Your role in this organization is read-only.")
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(org_context(self.request, self.org, self.can_admin))
        return context


def org_context(request, org: Organization, can_admin: bool) -> dict:
    """What base.html needs: the current org, the switcher, the role."""
    user = request.user
    role = "staff" if (user.is_staff or user.is_superuser) else member_role(org, user)
    return {"org": org, "can_admin": can_admin, "role": role,
            "user_orgs": list(orgs_for_user(user).only("key", "name").order_by("key"))}


def home(request):
    """``/``: the first org the user can see, or the sign-in page."""
    if not request.user.is_authenticated:
        return redirect("login")
    first = orgs_for_user(request.user).order_by("key").first()
    if first is None:
        from django.shortcuts import render

        return render(request, "sam/no_org.html", status=200)
    return redirect("sam:dashboard", org_key=first.key)
