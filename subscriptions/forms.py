"""Forms of the subscription pages. They only shape input: the services validate and write."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from subscriptions.models import Pool, Product

DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs):
        super().__init__(format=DATETIME_FORMAT, attrs={"step": "1"}, **kwargs)


class SubscriptionEditForm(forms.Form):
    quantity = forms.IntegerField(help_text="Number of units; -1 for unlimited.")
    start = forms.DateTimeField(widget=DateTimeInput())
    end = forms.DateTimeField(widget=DateTimeInput(), help_text="Must be after the start.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        zone = timezone.get_current_timezone_name()
        self.fields["start"].help_text = f"Date and time ({zone})."
        self.fields["end"].help_text = f"Date and time ({zone}); must be after the start."

    def add_service_error(self, exc: ValidationError) -> None:
        """Show a service's ValidationError on the field it concerns, else on the form."""
        field = {"invalid_quantity": "quantity", "invalid_dates": "end"}.get(
            getattr(exc, "code", None))
        for message in exc.messages:
            self.add_error(field, message)


class SubscriptionCreateForm(SubscriptionEditForm):
    product = forms.ModelChoiceField(queryset=Product.objects.none(), empty_label="Choose a product")
    start = forms.DateTimeField(widget=DateTimeInput(), required=False)
    end = forms.DateTimeField(widget=DateTimeInput(), required=False)
    contract_number = forms.CharField(max_length=64, required=False)

    field_order = ["product", "quantity", "start", "end", "contract_number"]

    def __init__(self, *args, org=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["product"].queryset = Product.objects.filter(org=org).order_by("sku")
        self.fields["product"].label_from_instance = lambda p: f"{p.sku} — {p.name}"
        self.fields["start"].help_text += " Empty: now."
        self.fields["end"].help_text += " Empty: one year after the start."


class PoolFilterForm(forms.Form):
    type = forms.ChoiceField(choices=[("", "Any type"), *Pool.Type.choices], required=False)
    product = forms.ChoiceField(required=False, label="Product")

    def __init__(self, *args, org=None, **kwargs):
        super().__init__(*args, **kwargs)
        skus = Product.objects.filter(org=org).only("sku", "name").order_by("sku")
        self.fields["product"].choices = [("", "Any product"),
                                          *((p.sku, f"{p.sku} — {p.name}") for p in skus)]


class ImportForm(forms.Form):
    file = forms.FileField(label="File", help_text="A CSV or JSON file (docs/import-format.md).")
    dry_run = forms.BooleanField(label="Dry run: validate only, change nothing", required=False)
