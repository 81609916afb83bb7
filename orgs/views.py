"""Org pages: settings, members, API tokens and the virt-who setup.

Every page goes through ``OrgPageMixin`` (404 for an org the user may not see, 403 for a POST
without the admin role) and calls the services of ``orgs.services``; nothing here writes rows
itself. A token's plaintext is shown once, on the page answering the POST that created it.
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views import View

from hypervisors.reporters import token_impact
from orgs import activation, services
from orgs.forms import (
    ActivationKeyForm,
    MemberForm,
    SettingsForm,
    TokenForm,
    VirtWhoForm,
    virt_who_config,
)
from orgs.models import ActivationKey, ApiToken
from sam import pki, pub
from sam.errors import ConfirmationRequired, NotFound
from sam.ui import OrgPageMixin, org_context

MAX_CONFIG = 20_000


def _errors(exc: ValidationError) -> str:
    return " ".join(exc.messages)


class _OrgPage(OrgPageMixin, View):
    template_name = ""

    def page(self, request, status: int = 200, **context):
        context.update(org_context(request, self.org, self.can_admin))
        return render(request, self.template_name, context, status=status)


class SettingsView(_OrgPage):
    template_name = "orgs/settings.html"

    def _form(self, data=None) -> SettingsForm:
        form = SettingsForm(data, initial=SettingsForm.initial_for(self.org))
        if not self.can_admin:
            for field in form.fields.values():
                field.disabled = True
        return form

    def get(self, request, org_key):
        return self.page(request, form=self._form())

    def post(self, request, org_key):
        form = self._form(request.POST)
        if form.is_valid():
            try:
                services.update_org(self.org, **form.settings())
            except ValidationError as exc:
                form.add_error(None, _errors(exc))
            else:
                messages.success(request, "Settings saved.")
                return redirect("orgs:settings", org_key=self.org.key)
        return self.page(request, status=400, form=form)


class MembersView(_OrgPage):
    """Members and roles. A change that revokes tokens the member created is shown on a
    confirmation page (tokens and the virt-who reporters that stop) before it is made."""

    template_name = "orgs/members.html"

    def _form(self, data=None) -> MemberForm:
        return MemberForm(data, operator=services.may_set_passwords(self.request.user))

    def get(self, request, org_key):
        return self.page(request, members=services.members(self.org), form=self._form())

    def _confirm(self, request, exc: ConfirmationRequired, action: str, username: str,
                 role: str = "", password_given: bool = False):
        return render(request, "orgs/member_confirm.html", {
            **org_context(request, self.org, self.can_admin), "message": exc.message,
            "impact": token_impact(self.org, exc.tokens), "action": action, "username": username,
            "role": role, "password_given": password_given,
        })

    def post(self, request, org_key):
        action = request.POST.get("action", "set")
        confirm = request.POST.get("confirm") == "1"
        if action == "remove":
            username = request.POST.get("username", "")
            if username == request.user.get_username():
                messages.error(request, "You cannot remove yourself; ask another admin.")
            else:
                try:
                    revoked = services.remove_member(self.org, username, confirm=confirm)
                except ConfirmationRequired as exc:
                    return self._confirm(request, exc, "remove", username)
                messages.success(request, f"{username} is no longer a member."
                                 + (f" {len(revoked)} token(s) revoked." if revoked else ""))
            return redirect("orgs:members", org_key=self.org.key)
        form = self._form(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            if data["username"] == request.user.get_username() and data["role"] != "admin":
                form.add_error("role", "You cannot lower your own role; ask another admin.")
            else:
                try:
                    services.set_member_role(self.org, data["username"], data["role"],
                                             password=data["password"] or None,
                                             actor=request.user, confirm=confirm)
                except ConfirmationRequired as exc:
                    return self._confirm(request, exc, "set", data["username"], data["role"],
                                         password_given=bool(data["password"]))
                except ValidationError as exc:
                    form.add_error(None, _errors(exc))
                else:
                    messages.success(request, f"{data['username']} is now {data['role']}.")
                    return redirect("orgs:members", org_key=self.org.key)
        return self.page(request, status=400, members=services.members(self.org), form=form)


class TokensView(_OrgPage):
    """Admins only, even to look: token names and roles say who can act on the org."""

    template_name = "orgs/tokens.html"
    admin_required = True

    def _tokens(self):
        return list(ApiToken.objects.filter(org=self.org).select_related("created_by")
                    .order_by("revoked", "name", "id"))

    def get(self, request, org_key):
        return self.page(request, tokens=self._tokens(), form=TokenForm(), now=timezone.now())

    def post(self, request, org_key):
        if request.POST.get("action") == "revoke":
            try:
                token = services.revoke_token(self.org, int(request.POST.get("token", "0")))
            except (ValueError, NotFound):
                messages.error(request, "No such token in this organization.")
            else:
                messages.success(request, f"Token {token.name} revoked.")
            return redirect("orgs:tokens", org_key=self.org.key)
        form = TokenForm(request.POST)
        created = plaintext = None
        if form.is_valid():
            data = form.cleaned_data
            expires = (timezone.now() + timedelta(days=data["expires_days"])
                       if data["expires_days"] else None)
            try:
                created, plaintext = services.create_token(self.org, data["name"], data["role"],
                                                           created_by=request.user, expires=expires)
            except ValidationError as exc:
                form.add_error(None, _errors(exc))
        status = 200 if created else 400
        response = self.page(request, status=status, tokens=self._tokens(),
                             form=TokenForm() if created else form, created=created,
                             plaintext=plaintext, now=timezone.now())
        response["Cache-Control"] = "no-store"
        return response


# --- virt-who setup ----------------------------------------------------------------------------

def _server_address(request) -> tuple[str, int]:
    """Host name and port of this server as the browser reached it: the request's ``Host`` and
    the scheme's default port (443, or 80 over plain HTTP) when it names none."""
    default = 443 if request.is_secure() else 80
    host = request.get_host()
    match = re.match(r"^(\[[^\]]+\]|[^:]+)(?::(\d+))?$", host)
    if not match:
        return host, default
    name, port = match.group(1), match.group(2)
    return name, int(port) if port else default


def _token_name(org, reporter_id: str) -> str:
    base = f"virt-who {reporter_id}"[:90]
    taken = set(ApiToken.objects.filter(org=org, name__startswith=base).values_list("name", flat=True))
    if base not in taken:
        return base
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


class SetupView(_OrgPage):
    """The form that makes a reporter token and a ready virt-who configuration."""

    template_name = "orgs/setup.html"

    def _tokens(self):
        return list(services.reporter_tokens(self.org)) if self.can_admin else []

    def get(self, request, org_key):
        hostname, port = _server_address(request)
        form = VirtWhoForm(initial={"rhsm_hostname": hostname, "rhsm_port": port,
                                    "reporter_id": f"virt-who-{self.org.key.lower()}"},
                           tokens=self._tokens())
        return self.page(request, form=form)

    def post(self, request, org_key):
        form = VirtWhoForm(request.POST, tokens=self._tokens())
        if not form.is_valid():
            return self.page(request, status=400, form=form)
        data = form.cleaned_data
        token, plaintext = data["reuse"], None
        try:
            if token is None:
                token, plaintext = services.create_token(
                    self.org, _token_name(self.org, data["reporter_id"]), "reporter",
                    created_by=request.user, reporter_id=data["reporter_id"],
                    expires=timezone.now() + timedelta(days=data["expires_days"]))
            else:
                services.assign_reporter(token, data["reporter_id"])
        except ValidationError as exc:
            form.add_error(None, _errors(exc))
            return self.page(request, status=400, form=form)
        config = virt_who_config(data, self.org.key, plaintext, reused=data["reuse"])
        response = self.page(request, form=None, config=config, token=token,
                             reused=data["reuse"] is not None, filename=f"{data['section']}.conf")
        response["Cache-Control"] = "no-store"
        return response


class SetupDownloadView(_OrgPage):
    """Hands the configuration shown after creation back as a file (POST: admins only).

    The token is not stored in plaintext, so the file can only be made from the page that
    showed it: that page posts its text here and gets it back as an attachment.
    """

    def get(self, request, org_key):
        return redirect("orgs:setup", org_key=self.org.key)

    def post(self, request, org_key):
        if not self.can_admin:  # OrgPageMixin already refuses; kept explicit for this file
            raise PermissionDenied
        config = request.POST.get("config", "").replace("\r\n", "\n")
        if not config.strip() or len(config) > MAX_CONFIG:
            return HttpResponse("No configuration to download.", status=400,
                                content_type="text/plain; charset=utf-8")
        name = request.POST.get("filename", "virt-who.conf")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.conf$", name):
            name = "virt-who.conf"
        response = HttpResponse(config, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


class RegisterSystemView(_OrgPage):
    """How a RHEL machine joins: the bootstrap line (the CA pinned by its key), the register
    commands, and this org's activation keys."""

    template_name = "orgs/register.html"

    def get(self, request, org_key):
        host, port = pub.server_address(request)
        return self.page(request, command=pub.bootstrap_command(request),
                         fingerprint=pki.ca_fingerprint(), server=f"{host}:{port}",
                         keys=ActivationKey.objects.filter(org=self.org).order_by("name"))


class ActivationKeysView(_OrgPage):
    """Activation keys: admins create and delete them, viewers read them."""

    template_name = "orgs/activation_keys.html"

    def _keys(self):
        return list(ActivationKey.objects.filter(org=self.org).prefetch_related("pools")
                    .order_by("name", "id"))

    def get(self, request, org_key):
        return self.page(request, keys=self._keys(), form=ActivationKeyForm())

    def post(self, request, org_key):
        if request.POST.get("action") == "delete":
            key = ActivationKey.objects.filter(org=self.org, pk=request.POST.get("key", "")
                                               if request.POST.get("key", "").isdigit() else 0).first()
            if key is None:
                messages.error(request, "No such activation key in this organization.")
            else:
                activation.delete_key(key)
                messages.success(request, f"Activation key {key.name} deleted.")
            return redirect("orgs:activation_keys", org_key=self.org.key)
        form = ActivationKeyForm(request.POST)
        if form.is_valid():
            data = dict(form.cleaned_data)
            try:
                key = activation.create_key(self.org, data.pop("name"), **data)
            except ValidationError as exc:
                form.add_error(None, _errors(exc))
            else:
                messages.success(request, f"Activation key {key.name} created.")
                return redirect("orgs:activation_keys", org_key=self.org.key)
        return self.page(request, status=400, keys=self._keys(), form=form)
