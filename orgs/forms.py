"""Forms of the org pages: settings, members, tokens and the virt-who setup."""

from __future__ import annotations

import re
from datetime import timedelta

from django import forms

from orgs.models import Organization
from orgs.services import ROLES

HOURS_MAX = 24 * 366


class SettingsForm(forms.Form):
    name = forms.CharField(max_length=255)
    autobind_enabled = forms.BooleanField(
        required=False, label="Auto-attach systems",
        help_text="The server attaches subscriptions to this org's systems by itself (heal).")
    hypervisor_autobind_enabled = forms.BooleanField(
        required=False, label="Auto-attach hypervisors",
        help_text="A guest's host may be given a subscription with virtual guests automatically.")
    unmapped_window_hours = forms.IntegerField(
        min_value=0, max_value=HOURS_MAX, label="Unmapped eligibility window (hours)",
        help_text="How long after registering a guest with no known host may take a temporary "
                  "entitlement.")
    unmapped_lifetime_hours = forms.IntegerField(
        min_value=1, max_value=HOURS_MAX, label="Temporary entitlement lifetime (hours)",
        help_text="A temporary entitlement ends this long after the guest registered.")
    content_access_mode = forms.ChoiceField(
        choices=Organization.ContentAccess.choices, label="Content access mode",
        help_text="What subscription-manager is shown. sam accounts every system's coverage "
                  "in all three; see the explanation below.")

    @classmethod
    def initial_for(cls, org: Organization) -> dict:
        return {
            "name": org.name,
            "autobind_enabled": org.autobind_enabled,
            "hypervisor_autobind_enabled": org.hypervisor_autobind_enabled,
            "unmapped_window_hours": int(org.unmapped_window.total_seconds() // 3600),
            "unmapped_lifetime_hours": int(org.unmapped_lifetime.total_seconds() // 3600),
            "content_access_mode": org.content_access_mode,
        }

    def settings(self) -> dict:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "autobind_enabled": data["autobind_enabled"],
            "hypervisor_autobind_enabled": data["hypervisor_autobind_enabled"],
            "unmapped_window": timedelta(hours=data["unmapped_window_hours"]),
            "unmapped_lifetime": timedelta(hours=data["unmapped_lifetime_hours"]),
            "content_access_mode": data["content_access_mode"],
        }


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=[(r, r) for r in ROLES], initial="viewer")
    password = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False),
        help_text="Passwords apply only to new accounts: leave it empty to add an existing user "
                  "(a password given for an existing name is not applied).")

    def __init__(self, *args, operator: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if operator:  # orgs.services.may_set_passwords
            self.fields["password"].help_text = (
                "For a new account; as an operator you also set an existing user's password here.")


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100)
    role = forms.ChoiceField(choices=[(r, r) for r in ROLES], initial="reporter")
    expires_days = forms.IntegerField(required=False, min_value=1, max_value=3660,
                                      label="Expires after (days)",
                                      help_text="Empty: never expires (revoke it when done).")


# --- virt-who ----------------------------------------------------------------------------------

HYPERVISOR_TYPES = [
    ("esx", "VMware vCenter / ESXi (esx)"),
    ("hyperv", "Microsoft Hyper-V (hyperv)"),
    ("libvirt", "libvirt / KVM, remote (libvirt)"),
    ("kubevirt", "OpenShift Virtualization / KubeVirt (kubevirt)"),
    ("ahv", "Nutanix AHV / Prism (ahv)"),
]
HYPERVISOR_ID_CHOICES = [("hostname", "hostname"), ("uuid", "uuid"), ("hwuuid", "hwuuid")]
SECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VALUE_RE = re.compile(r"^[^\r\n]*$")  # one line: a value must not smuggle in another option


def _one_line(value: str, label: str) -> str:
    if not VALUE_RE.match(value or ""):
        raise forms.ValidationError(f"{label} must be a single line.")
    return (value or "").strip()


TOKEN_DAYS = 365  # a new reporter token's lifetime unless the form says otherwise


class VirtWhoForm(forms.Form):
    hypervisor_type = forms.ChoiceField(choices=HYPERVISOR_TYPES, label="Hypervisor type")
    section = forms.CharField(
        max_length=64, label="Section name", initial="esx-vcenter1",
        help_text="The [name] of this configuration in /etc/virt-who.d/ (letters, digits, . _ -).")
    server = forms.CharField(
        max_length=255, required=False, label="Server",
        help_text="vCenter / Hyper-V / Prism address, or a libvirt URI such as "
                  "qemu+ssh://root@kvm01.example.com/system. Not used for kubevirt.")
    username = forms.CharField(max_length=255, required=False, label="Username")
    password = forms.CharField(
        max_length=255, required=False, label="Password", widget=forms.PasswordInput(),
        help_text="Optional: leave empty and fill it in on the virt-who host (it is not stored).")
    kubeconfig = forms.CharField(max_length=255, required=False, label="kubeconfig path",
                                 initial="/root/.kube/config",
                                 help_text="kubevirt only: the path of the kubeconfig file.")
    hypervisor_id = forms.ChoiceField(choices=HYPERVISOR_ID_CHOICES, initial="hostname",
                                      label="Hypervisor id",
                                      help_text="How hypervisors are named here; do not change it later.")
    interval = forms.IntegerField(min_value=60, max_value=7 * 86400, initial=3600,
                                  label="Interval (seconds)",
                                  help_text="How often virt-who reports (at least 60).")
    reporter_id = forms.CharField(max_length=255, label="Reporter id",
                                  help_text="Names this virt-who instance in reports and health.")
    rhsm_hostname = forms.CharField(max_length=255, label="This server's host name",
                                    help_text="As the virt-who host reaches it.")
    rhsm_port = forms.IntegerField(min_value=1, max_value=65535, label="This server's port")
    token = forms.ChoiceField(
        required=False, label="Reporter token", initial="new",
        help_text="A new token is shown once, in the configuration. To reuse a token, paste it "
                  "into the configuration yourself (it is stored only as a hash).")
    expires_days = forms.IntegerField(
        required=False, min_value=1, max_value=3660, initial=TOKEN_DAYS,
        label="New token expires after (days)",
        help_text="Empty: a year. Reporter health warns 30 days before it expires; then make "
                  "a new one here.")

    def __init__(self, *args, tokens=(), **kwargs):
        """``tokens``: the org's usable reporter tokens, offered for reuse."""
        super().__init__(*args, **kwargs)
        self.reusable = {str(t.pk): t for t in tokens}
        self.fields["token"].choices = [("new", "Create a new token")] + [
            (pk, f"Reuse “{t.name}” (sam_{t.prefix}_…, "
                 f"{'expires ' + t.expires.date().isoformat() if t.expires else 'never expires'})")
            for pk, t in self.reusable.items()]

    def clean_section(self):
        value = self.cleaned_data["section"].strip()
        if not SECTION_RE.match(value):
            raise forms.ValidationError("Use 1-64 letters, digits, '.', '_' or '-'.")
        return value

    def clean(self):
        data = super().clean()
        for name in ("server", "username", "password", "kubeconfig", "reporter_id", "rhsm_hostname"):
            if name in data:
                try:
                    data[name] = _one_line(data[name], self.fields[name].label)
                except forms.ValidationError as exc:
                    self.add_error(name, exc)
        data["reuse"] = self.reusable.get(data.get("token") or "new")
        if data.get("expires_days") is None and "expires_days" not in self.errors:
            data["expires_days"] = TOKEN_DAYS
        kind = data.get("hypervisor_type")
        if kind == "kubevirt":
            if not data.get("kubeconfig"):
                self.add_error("kubeconfig", "kubevirt needs the path of a kubeconfig file.")
        elif kind:
            if not data.get("server"):
                self.add_error("server", f"{kind} needs the address of the server to query.")
            if kind != "libvirt" and not data.get("username"):
                self.add_error("username", f"{kind} needs a user name to sign in with.")
        return data


def virt_who_config(data: dict, org_key: str, token: str, reused=None) -> str:
    """The file to save as /etc/virt-who.d/<section>.conf (``data``: cleaned VirtWhoForm).
    ``reused``: the existing token it uses, whose plaintext the user pastes in."""
    kind = data["hypervisor_type"]
    lines = [
        f"# virt-who configuration for sam organization {org_key}",
        "# Save as /etc/virt-who.conf (or: the [global] options into /etc/virt-who.conf and the",
        f"# [{data['section']}] section into /etc/virt-who.d/{data['section']}.conf), copy this",
        "# server's CA certificate to /etc/rhsm/ca/, then restart virt-who.",
        ("# The reporter token below was shown once; it is stored only as a hash on the server."
         if reused is None else
         # (one line whatever the token's name holds: the name may not add an option)
         f"# rhsm_password: paste the existing token \"{' '.join(reused.name.split())}\" "
         f"(sam_{reused.prefix}_...)."),
        "[global]",
        f"interval={data['interval']}",
        f"reporter_id={data['reporter_id']}",
        "",
        f"[{data['section']}]",
        f"type={kind}",
    ]
    if kind == "kubevirt":
        lines.append(f"kubeconfig={data['kubeconfig']}")
    else:
        lines.append(f"server={data['server']}")
        if data.get("username"):
            lines.append(f"username={data['username']}")
        if kind != "libvirt" or data.get("password"):
            lines.append(f"password={data.get('password') or 'CHANGE-ME'}")
    lines += [
        f"owner={org_key}",
        f"hypervisor_id={data['hypervisor_id']}",
        f"rhsm_hostname={data['rhsm_hostname']}",
        f"rhsm_port={data['rhsm_port']}",
        "rhsm_prefix=/candlepin",
        "rhsm_username=virt-who",
        f"rhsm_password={token if reused is None else 'CHANGE-ME'}",
    ]
    return "\n".join(lines) + "\n"


# --- Activation keys -------------------------------------------------------------------------

class ActivationKeyForm(forms.Form):
    name = forms.CharField(max_length=255, help_text="Used as --activationkey NAME (no commas).")
    description = forms.CharField(max_length=4000, required=False)
    auto_attach = forms.BooleanField(required=False, initial=True,
                                     label="Attach subscriptions at registration")
    service_level = forms.CharField(max_length=255, required=False)
    release_ver = forms.CharField(max_length=255, required=False, label="Release",
                                  help_text="e.g. 9.4: the system stays on that minor release.")
    usage = forms.CharField(max_length=255, required=False)
    role = forms.CharField(max_length=255, required=False)
