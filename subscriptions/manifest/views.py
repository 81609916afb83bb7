"""Web UI: the org's manifest page (status, upload with conflicts and the choice to force,
history) and "delete manifest". Writes go through ``subscriptions.manifest.importer`` only."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.utils import timezone
from django.views.generic import TemplateView

from sam.ui import OrgPageMixin
from subscriptions.manifest import http, importer, signature
from subscriptions.manifest.reader import InvalidManifest
from subscriptions.manifest.status import manifest_status
from subscriptions.models import ManifestImport

HISTORY_SHOWN = 20
FORCE_LABELS = {
    importer.SIGNATURE_CONFLICT: "the signature does not verify, or no upstream certificate is trusted",
    importer.MANIFEST_OLD: "the manifest is older than the one imported",
    importer.MANIFEST_SAME: "the manifest was exported at the same time as the one imported",
    importer.DISTRIBUTOR_CONFLICT: "the manifest comes from another distributor (subscription allocation)",
}


class ManifestForm(forms.Form):
    file = forms.FileField(label="Manifest (.zip)",
                           help_text="Export it from the Red Hat Customer Portal (Subscription Allocations).")
    force = forms.MultipleChoiceField(
        label="Import despite", required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(key, f"{key}: {text}") for key, text in FORCE_LABELS.items()])


class ManifestView(OrgPageMixin, TemplateView):
    template_name = "subscriptions/manifest.html"
    sam_body_limit = staticmethod(http.max_request_bytes)  # beyond Django's 2.5 MB

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("form", ManifestForm())
        context.update(
            status=manifest_status(self.org),
            history=list(ManifestImport.objects.filter(org=self.org).defer("payload")
                         .order_by("-created", "-id")[:HISTORY_SHOWN]),
            trust_dir=signature.trust_dir(),
            trusted=len(signature.trusted_certificates()),
            max_mib=settings.SAM_MANIFEST_MAX_BYTES // (1024 * 1024),
            now=timezone.now(),
        )
        return context

    def post(self, request, *args, **kwargs):
        try:
            http.check_length(request)
        except http.TooLarge as exc:
            return self.render_to_response(self.get_context_data(error=str(exc)), status=413)
        form = ManifestForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        upload = form.cleaned_data["file"]
        try:
            record = importer.import_manifest(self.org, http.read_file(upload),
                                              force=form.cleaned_data["force"], file_name=upload.name,
                                              principal=request.user.get_username())
        except http.TooLarge as exc:
            return self.render_to_response(self.get_context_data(form=form, error=str(exc)), status=413)
        except (InvalidManifest, ValidationError) as exc:
            message = exc.message if isinstance(exc, InvalidManifest) else " ".join(exc.messages)
            return self.render_to_response(self.get_context_data(form=form, error=message), status=400)
        except (importer.ManifestConflict, importer.ManifestRefused) as exc:
            # Offer to force exactly what was found (the file must be chosen again).
            retry = ManifestForm(initial={"force": [c["key"] for c in exc.record.conflicts]})
            return self.render_to_response(self.get_context_data(
                form=retry, conflict=exc.record, refused=isinstance(exc, importer.ManifestRefused),
                labels=FORCE_LABELS), status=409)
        level = messages.success if record.status == ManifestImport.Status.SUCCESS else messages.warning
        level(request, f"Manifest imported: {record.message}")
        return redirect("subscriptions:manifest", org_key=self.org.key)


class ManifestDeleteView(OrgPageMixin, TemplateView):
    admin_required = True
    template_name = "subscriptions/manifest.html"

    def get(self, request, *args, **kwargs):
        return redirect("subscriptions:manifest", org_key=self.org.key)

    def post(self, request, *args, **kwargs):
        try:
            record = importer.delete_manifest(self.org, principal=request.user.get_username())
        except importer.NoManifest:
            messages.error(request, "There is no imported manifest to delete.")
        else:
            messages.success(request, f"Manifest deleted: {record.counts.get('removed', 0)} subscription(s) "
                                      f"removed, {record.counts.get('revoked', 0)} entitlement(s) revoked.")
        return redirect("subscriptions:manifest", org_key=self.org.key)
