"""Bulk import of products and subscriptions from JSON or CSV (format: docs/import-format.md).

Three steps, as plain functions: ``parse`` turns the upload into numbered rows, ``plan`` checks
EVERY row against the org and the rest of the file (nothing is written) and decides
create / update / unchanged per record, ``apply`` carries out a clean plan through the services
in one transaction. Any invalid row raises ``InvalidImport`` with a per-row report, so an
import is all or nothing. Re-importing the same file is idempotent: products are keyed by sku,
subscriptions by ``contract_number`` (alias ``external_id``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import dateparse, timezone

from orgs.models import Organization
from sam import inputs
from subscriptions import services
from subscriptions.models import UNLIMITED, Product, Subscription

MAX_BYTES = 10 * 1024 * 1024
MAX_BODY = MAX_BYTES + 64 * 1024  # a request carrying such a file (multipart framing)
MAX_ROWS = 10_000
PRODUCT_FIELDS = {"sku", "name", "attributes", "provided", "derived"}
SUBSCRIPTION_FIELDS = {"product", "quantity", "start", "end", "derived", "contract_number",
                       "external_id", "account_number", "order_number"}
CSV_COLUMNS = {"record"} | PRODUCT_FIELDS | SUBSCRIPTION_FIELDS


class InvalidImport(Exception):
    """The upload is unusable (``rows`` empty) or some rows are invalid (one entry per row)."""

    def __init__(self, message: str, rows: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.rows = rows or []


@dataclass
class Row:
    number: int  # CSV: line in the file (header = 1); JSON: position, products first
    record: str | None  # "product" | "subscription" | None (unknown)
    data: dict
    path: str | None = None  # JSON only, e.g. "subscriptions[2]"
    errors: list[str] = field(default_factory=list)

    def report(self) -> dict:
        key = self.data.get("sku") if self.record == "product" else (
            self.data.get("contract_number") or self.data.get("external_id"))
        out = {"row": self.number, "record": self.record, "key": str(key) if key else None,
               "errors": self.errors}
        if self.path:
            out["path"] = self.path
        return out


@dataclass
class Plan:
    products: list[dict] = field(default_factory=list)  # {"action", "sku", "name", ...}
    subscriptions: list[dict] = field(default_factory=list)  # {"action", "uuid"?, ...}

    def counts(self) -> dict:
        def count(items):
            return {a: sum(1 for i in items if i["action"] == a) for a in ("created", "updated", "unchanged")}

        return {"rows": len(self.products) + len(self.subscriptions),
                "products": count(self.products), "subscriptions": count(self.subscriptions)}


# --- Parsing ----------------------------------------------------------------------------------

def detect_format(content: bytes | str, filename: str = "", content_type: str = "") -> str:
    """``json`` or ``csv``: by content type, then file extension, then the first character."""
    content_type, filename = (content_type or "").lower(), (filename or "").lower()
    for hint in (content_type, filename):
        if "csv" in hint:
            return "csv"
        if "json" in hint:
            return "json"
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    return "json" if text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") else "csv"


def parse(content: bytes | str, filename: str = "", content_type: str = "") -> list[Row]:
    """Numbered rows from an uploaded file (JSON or CSV)."""
    if len(content) > MAX_BYTES:
        raise InvalidImport(f"The file is larger than {MAX_BYTES // (1024 * 1024)} MiB.")
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidImport("The file is not UTF-8 text.") from None
    content = content.lstrip("\ufeff")
    if inputs.bad_text(content):  # one C-speed scan of the text, CSV or JSON
        raise InvalidImport(f"The file {inputs.BAD_TEXT}.")
    if detect_format(content, filename, content_type) == "csv":
        return parse_csv(content)
    try:
        data = inputs.loads(content, "The file", strict=True)
    except inputs.BadInput as exc:
        raise InvalidImport(exc.text) from None
    except ValueError as exc:
        raise InvalidImport(f"The file is not valid JSON: {exc}.") from None
    return parse_json(data)


def parse_json(data) -> list[Row]:
    """Rows from ``{"products": [...], "subscriptions": [...]}`` or a list of records that
    each carry ``"record": "product" | "subscription"``."""
    items: list[tuple[str | None, object, str]] = []
    if isinstance(data, dict):
        unknown = set(data) - {"products", "subscriptions"}
        if unknown:
            raise InvalidImport(f"Unknown top-level key(s): {', '.join(sorted(unknown))}; "
                                "expected 'products' and 'subscriptions'.")
        for kind, key in (("product", "products"), ("subscription", "subscriptions")):
            records = data.get(key) or []
            if not isinstance(records, list):
                raise InvalidImport(f"'{key}' must be a list.")
            items += [(kind, r, f"{key}[{i}]") for i, r in enumerate(records)]
    elif isinstance(data, list):
        for i, r in enumerate(data):
            items.append((r.pop("record", None) if isinstance(r, dict) else None, r, f"[{i}]"))
    else:
        raise InvalidImport("Expected a JSON object with 'products' and 'subscriptions', or a list.")
    _check_size(len(items))
    rows = []
    for number, (kind, record, path) in enumerate(items, start=1):
        if not isinstance(record, dict):
            rows.append(Row(number, None, {}, path, ["a record must be a JSON object."]))
            continue
        rows.append(Row(number, kind, dict(record), path))
    return rows


def parse_csv(text: str) -> list[Row]:
    """One row per record; ``record`` says which; empty cells are absent values."""
    reader = csv.DictReader(io.StringIO(text))
    header = [(h or "").strip() for h in reader.fieldnames or []]
    if "record" not in header:
        raise InvalidImport("The CSV header must have a 'record' column (product or subscription).")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise InvalidImport(f"Unknown CSV column(s): {', '.join(unknown)}.")
    reader.fieldnames = header
    rows = []
    for line in reader:
        _check_size(len(rows) + 1)
        number = reader.line_num
        if None in line:
            rows.append(Row(number, None, {}, errors=["more cells than header columns."]))
            continue
        cells = {k: (v or "").strip() for k, v in line.items()}
        if not any(cells.values()):
            continue  # blank line
        kind = cells.pop("record").lower()
        data = {k: v for k, v in cells.items() if v != ""}
        row = Row(number, kind, data)
        if "attributes" in data:
            pairs = [p for p in data["attributes"].split(";") if p.strip()]
            bad = [p for p in pairs if "=" not in p]
            if bad:
                row.errors.append(f"attributes: expected name=value;name=value, got {bad[0]!r}.")
            data["attributes"] = dict(p.split("=", 1) for p in pairs if "=" in p)
            data["attributes"] = {k.strip(): v.strip() for k, v in data["attributes"].items()}
        if "provided" in data:
            data["provided"] = [p.strip() for p in data["provided"].split(";") if p.strip()]
        rows.append(row)
    return rows


def _check_size(n: int) -> None:
    if n > MAX_ROWS:
        raise InvalidImport(f"Too many records (more than {MAX_ROWS}); split the file.")


# --- Validation -------------------------------------------------------------------------------

def _text(row: Row, name: str, required: bool = False, max_length: int = 64) -> str:
    value = row.data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            row.errors.append(f"{name}: required.")
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        row.errors.append(f"{name}: must be a string.")
        return ""
    value = str(value).strip()
    if len(value) > max_length:
        row.errors.append(f"{name}: at most {max_length} characters.")
    if inputs.bad_text(value):
        row.errors.append(f"{name}: {inputs.BAD_TEXT}.")
    return value


def _when(row: Row, name: str) -> datetime | None:
    value = row.data.get(name)
    if value in (None, ""):
        row.errors.append(f"{name}: required (ISO 8601 date or date-time).")
        return None
    parsed = None
    if isinstance(value, str):
        try:
            parsed = dateparse.parse_datetime(value.strip())
            if parsed is None and (day := dateparse.parse_date(value.strip())):
                parsed = datetime.combine(day, time.min)
        except ValueError:
            parsed = None
    if parsed is None:
        row.errors.append(f"{name}: {value!r} is not an ISO 8601 date or date-time.")
        return None
    parsed = timezone.make_aware(parsed, UTC) if timezone.is_naive(parsed) else parsed
    try:
        return inputs.check_datetime(parsed, name)
    except inputs.BadInput as exc:
        row.errors.append(f"{exc.text}")
        return None


def _quantity(row: Row) -> int | None:
    value = row.data.get("quantity")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        row.errors.append(f"quantity: {value!r} is not a whole number." if value is not None
                          else "quantity: required.")
        return None
    if value != UNLIMITED and not 1 <= value <= services.MAX_QUANTITY:
        row.errors.append(f"quantity: must be between 1 and {services.MAX_QUANTITY}, "
                          f"or -1 for unlimited (got {value}).")
        return None
    return value


def _unknown_fields(row: Row, allowed: set[str]) -> None:
    for name in sorted(set(row.data) - allowed):
        row.errors.append(f"{name}: not a field of a {row.record} record.")


def _plan_product(row: Row, existing: dict[str, Product], defined: set[str]) -> dict | None:
    _unknown_fields(row, PRODUCT_FIELDS)
    sku = _text(row, "sku", required=True)
    name = _text(row, "name", required=True, max_length=255)
    try:
        attributes = services.clean_attributes(row.data.get("attributes"))
    except ValidationError as exc:
        row.errors.append(f"attributes: {' '.join(exc.messages)}")
        attributes = {}
    provided = row.data.get("provided") or []
    if not isinstance(provided, list) or not all(isinstance(p, (str, int)) for p in provided) \
            or any(inputs.bad_text(str(p)) for p in provided):
        row.errors.append("provided: must be a list of product skus.")
        provided = []
    provided = sorted({str(p).strip() for p in provided})
    derived = _text(row, "derived") or None
    for label, ref in [*(("provided", p) for p in provided), ("derived", derived)]:
        if ref and ref not in existing and ref not in defined:
            row.errors.append(f"{label}: product {ref!r} is neither in the organization nor in the file.")
    if row.errors:
        return None
    item = {"sku": sku, "name": name, "attributes": attributes, "provided": provided, "derived": derived}
    current = existing.get(sku)
    if current is None:
        item["action"] = "created"
    else:
        same = (current.name == name and current.attributes == attributes
                and sorted(p.sku for p in current.provided_products.all()) == provided
                and (current.derived_product.sku if current.derived_product_id else None) == derived)
        item["action"] = "unchanged" if same else "updated"
    return item


def _plan_subscription(row: Row, existing: dict[str, list[Subscription]], products: dict[str, str | None],
                       ) -> dict | None:
    """``products``: every sku known after the import -> its default derived sku."""
    _unknown_fields(row, SUBSCRIPTION_FIELDS)
    sku = _text(row, "product", required=True)
    contract, external = _text(row, "contract_number"), _text(row, "external_id")
    if contract and external and contract != external:
        row.errors.append("external_id: differs from contract_number (they are the same key).")
    key = contract or external
    if not key and not row.errors:
        row.errors.append("contract_number: required (the key that makes re-import idempotent).")
    quantity = _quantity(row)
    start, end = _when(row, "start"), _when(row, "end")
    if start and end and end <= start:
        row.errors.append("end: must be after start.")
    derived = _text(row, "derived") or None
    account, order = _text(row, "account_number"), _text(row, "order_number")
    if sku and sku not in products:
        row.errors.append(f"product: {sku!r} is neither in the organization nor in the file.")
    if derived and derived not in products:
        row.errors.append(f"derived: {derived!r} is neither in the organization nor in the file.")
    matches = existing.get(key, []) if key else []
    if len(matches) > 1:
        row.errors.append(f"contract_number: {len(matches)} subscriptions already carry {key!r}; "
                          "make it unique before importing.")
    elif matches:
        sub = matches[0]
        if sku and sub.product.sku != sku:
            row.errors.append(f"product: contract {key!r} is a subscription of {sub.product.sku!r}; "
                              "the product of a subscription cannot change.")
        old = sub.derived_product.sku if sub.derived_product_id else None
        if derived and derived != old:
            row.errors.append(f"derived: contract {key!r} has derived product {old!r}; "
                              "it cannot change.")
    if row.errors:
        return None
    item = {"product": sku, "quantity": quantity, "start": start, "end": end, "derived": derived,
            "contract_number": key, "account_number": account, "order_number": order}
    if not matches:
        item["action"] = "created"
    else:
        sub = matches[0]
        same = (sub.quantity, sub.start, sub.end) == (quantity, start, end)
        item.update(action="unchanged" if same else "updated", uuid=sub.uuid)
    return item


def plan(org: Organization, rows: list[Row]) -> Plan:
    """Check every row (a constant number of queries) and decide what each would do.

    Raises ``InvalidImport`` listing every invalid row; writes nothing."""
    if not rows:
        raise InvalidImport("The file holds no products and no subscriptions.")
    for row in rows:
        if row.record not in ("product", "subscription") and not row.errors:
            row.errors.append(f"record: must be 'product' or 'subscription', not {row.record!r}.")
    product_rows = [r for r in rows if r.record == "product"]
    sub_rows = [r for r in rows if r.record == "subscription"]
    existing = {p.sku: p for p in Product.objects.filter(org=org).select_related("derived_product")
                .prefetch_related("provided_products")}
    defined: set[str] = set()
    result = Plan()
    seen: dict[str, int] = {}
    for row in product_rows:
        sku = str(row.data.get("sku") or "").strip()
        if sku in seen:
            row.errors.append(f"sku: {sku!r} already defined in row {seen[sku]}.")
        elif sku:
            seen[sku] = row.number
        defined.add(sku)
    for row in product_rows:
        if (item := _plan_product(row, existing, defined)) is not None:
            result.products.append(item)
    # Derived product a subscription gets by default: the product's (as in the file, if there).
    known = {sku: (p.derived_product.sku if p.derived_product_id else None) for sku, p in existing.items()}
    known.update({i["sku"]: i["derived"] for i in result.products})
    known.update({s: None for s in defined if s and s not in known})
    keys = {str(r.data.get("contract_number") or r.data.get("external_id") or "").strip() for r in sub_rows}
    subs: dict[str, list[Subscription]] = {}
    # Subscriptions of the imported manifest are never matched: the manifest owns them.
    for sub in (Subscription.objects.filter(org=org, contract_number__in=keys - {""}, managed=False)
                .select_related("product", "derived_product")):
        subs.setdefault(sub.contract_number, []).append(sub)
    seen = {}
    for row in sub_rows:
        key = str(row.data.get("contract_number") or row.data.get("external_id") or "").strip()
        if key in seen:
            row.errors.append(f"contract_number: {key!r} already used in row {seen[key]}.")
        elif key:
            seen[key] = row.number
        if (item := _plan_subscription(row, subs, known)) is not None:
            result.subscriptions.append(item)
    bad = [r.report() for r in rows if r.errors]
    if bad:
        raise InvalidImport(f"{len(bad)} of {len(rows)} row(s) are invalid; nothing was imported.", bad)
    return result


# --- Applying ---------------------------------------------------------------------------------

@transaction.atomic
def apply(org: Organization, rows: list[Row]) -> dict:
    """Validate and carry out the whole import in one transaction through the services."""
    # Row lock on the org: two imports of one org run one after the other, so the contract
    # lookups of the plan stay true until commit (no duplicate subscriptions).
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    result = plan(org, rows)
    changed = [p for p in result.products if p["action"] != "unchanged"]
    # Every new product first without references, so products may refer to each other (even in
    # a cycle) in any order; then the references.
    for p in changed:
        if p["action"] == "created":
            services.create_product(org, p["sku"], p["name"], p["attributes"])
    for p in changed:
        if p["action"] == "updated" or p["provided"] or p["derived"]:
            services.create_product(org, p["sku"], p["name"], p["attributes"], p["provided"], p["derived"])
    for s in result.subscriptions:
        if s["action"] == "created":
            services.create_subscription(
                org, s["product"], s["quantity"], s["start"], s["end"], derived=s["derived"],
                contract_number=s["contract_number"], account_number=s["account_number"],
                order_number=s["order_number"], trigger="import")
        elif s["action"] == "updated":
            services.update_subscription(org, s["uuid"], s["quantity"], s["start"], s["end"],
                                         trigger="import")
    return {"dry_run": False, **result.counts()}


def run(org: Organization, rows: list[Row], dry_run: bool = False) -> dict:
    """The import entry point: a dry run only validates and reports what would happen. Each
    affected system is re-resolved once after the import commits, not once per row."""
    if dry_run:
        return {"dry_run": True, **plan(org, rows).counts()}
    with services.deferred_resolution():
        return apply(org, rows)
