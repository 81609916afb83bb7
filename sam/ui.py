"""Shared pieces of the server-rendered web UI: the org-scoped page base and the home page.

Every page lives under ``/o/<org_key>/``. An org the user may not see is a 404 (as in the
API); viewers get every page read-only, a POST needs the admin role (403 otherwise).
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect

from orgs.auth import LoginForm
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


# The header link of each page (aria-current): URL name prefix -> section.
SECTIONS = {"sam:dashboard": "dashboard", "hypervisors:hypervisor": "hypervisors",
            "hypervisors:system": "systems", "hypervisors:report": "reports",
            "subscriptions:": "subscriptions", "orgs:setup": "setup", "orgs:register": "register",
            "orgs:activation_keys": "register", "orgs:": "settings"}


def section_of(view_name: str) -> str:
    """The header section a view belongs to (``""``: none); the first matching prefix wins."""
    return next((section for prefix, section in SECTIONS.items()
                 if view_name.startswith(prefix)), "")


class BadFormIs400:
    """A form view whose invalid form comes back with status 400 (bad input is a 4xx)."""

    def form_invalid(self, form):
        response = super().form_invalid(form)
        response.status_code = 400
        return response


def org_context(request, org: Organization, can_admin: bool) -> dict:
    """What base.html needs: the current org, the switcher, the role, the header section."""
    user = request.user
    role = "staff" if (user.is_staff or user.is_superuser) else member_role(org, user)
    match = request.resolver_match
    return {"org": org, "can_admin": can_admin, "role": role,
            "section": section_of(match.view_name if match else ""),
            "user_orgs": list(orgs_for_user(user).only("key", "name").order_by("key"))}


def home(request):
    """``/``: the org of ``?org=`` (the header's switcher) if the user may see it, else the
    first org the user can see; the sign-in page when signed out."""
    if not request.user.is_authenticated:
        return redirect("login")
    visible = orgs_for_user(request.user)
    wanted = request.GET.get("org", "")
    if wanted and visible.filter(key=wanted).exists():
        return redirect("sam:dashboard", org_key=wanted)
    first = visible.order_by("key").first()
    if first is None:
        from django.shortcuts import render

        return render(request, "sam/no_org.html", status=200)
    return redirect("sam:dashboard", org_key=first.key)


class SignInView(auth_views.LoginView):
    """Django's sign-in page with the credential throttle: a locked-out client gets the form
    back with the lockout message, status 429 and ``Retry-After``, and no password is hashed."""

    form_class = LoginForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.throttled.retry_after)
        return response


class _Echo:
    def write(self, value):
        return value


CSV_BATCH = 500


def csv_response(filename: str, header: list[str], rows):
    """A streamed CSV download: ``rows`` is an iterable of lists, read lazily (an export of a
    large list never sits in memory). Cells that a spreadsheet would run as a formula are
    prefixed with a quote."""
    import csv

    from django.http import StreamingHttpResponse

    writer = csv.writer(_Echo())

    def safe(value):
        text = "" if value is None else str(value)
        return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

    def lines():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([safe(v) for v in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def batched(queryset, size: int = CSV_BATCH):
    """The rows of an ordered ``values``/``values_list`` queryset, read ``size`` at a time by
    primary key (constant memory; no server-side cursor needed, so SQLite works the same)."""
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        chunk = list(page[:size])
        if not chunk:
            return
        yield from chunk
        last = chunk[-1][0]
