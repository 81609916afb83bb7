"""Filter and action forms of the hypervisor, system and report pages (every field labelled)."""

from __future__ import annotations

from django import forms

from hypervisors.models import Report

BLANK = [("", "any")]


class ReportFilterForm(forms.Form):
    state = forms.ChoiceField(label="State", required=False, choices=BLANK + list(Report.State.choices))
    reporter = forms.CharField(label="Reporter", required=False, max_length=255)


class AttachForm(forms.Form):
    """Choose a subscription with virtual guests for a host; choices are set by the view."""

    pool = forms.ChoiceField(label="Subscription")

    def __init__(self, *args, pools=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"].choices = [(str(p.uuid), pool_label(p)) for p in pools]


def pool_label(pool) -> str:
    sub = pool.subscription
    used = "unlimited" if pool.quantity == -1 else f"{pool.consumed} of {pool.quantity} used"
    contract = f"contract {sub.contract_number}, " if sub.contract_number else ""
    return f"{sub.product.sku} — {sub.product.name} ({contract}{used}, ends {pool.end:%Y-%m-%d})"
