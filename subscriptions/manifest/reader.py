"""Reading a Red Hat subscription manifest (manifest.md sections 1, 2 and 11).

The upload is a zip holding ``consumer_export.zip`` (the data, itself a zip of ``export/``)
and ``signature`` (over the exact bytes of that inner zip). Both levels are read in memory
with size limits and never extracted by entry name. Only what sam uses is kept: no
certificate, no private key, no content set leaves this module. Every problem raises
``InvalidManifest`` with a sentence saying what is wrong (the views answer 400).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

EXPORT = "consumer_export.zip"
SIGNATURE = "signature"
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_ENTRY_BYTES = 16 * 1024 * 1024  # one file of export/ unpacked (largest real one: 5.3 MB)
MAX_UNPACKED_BYTES = 128 * 1024 * 1024  # all of export/ unpacked (largest real manifest: 12 MB)
MAX_ENTRIES = 20_000  # files in export/ (largest real manifest: 348)
MAX_QUANTITY = 10_000_000
MAX_ATTRIBUTE_CHARS = 64 * 1024

# What export/ may hold (manifest.md section 2); anything else is refused as unexpected.
_LAYOUT = [re.compile(p) for p in (
    r"export/(meta|consumer|scheme)\.json",
    r"export/(consumer_types|distributor_version|content_delivery_network)/[^/]+\.json",
    r"export/upstream_consumer/[^/]+\.(json|pem)",
    r"export/entitlements/[^/]+\.json",
    r"export/entitlement_certificates/[^/]+\.pem",
    r"export/products/[^/]+\.(json|pem)",
    r"export/(rules|rules2|content_access_certificates)/[^/]+",
    r"export/([a-z_0-9]+/)?",  # directory entries
)]
_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                   r"(Z|[+-]\d\d:?\d\d)?")


class InvalidManifest(Exception):
    """The upload is not a manifest sam can read; ``message`` says what is wrong (a 400)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- What a manifest gives sam ----------------------------------------------------------------

@dataclass
class Product:
    sku: str
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    provided: list[str] = field(default_factory=list)
    derived: str | None = None


@dataclass
class Entitlement:
    """One upstream entitlement of the distributor: one local subscription."""

    id: str
    pool_id: str
    product: str
    derived: str | None
    quantity: int
    start: datetime
    end: datetime
    contract_number: str = ""
    account_number: str = ""
    order_number: str = ""
    cert_serial: str = ""


@dataclass
class Distributor:
    uuid: str
    name: str = ""
    type: str = ""
    owner_key: str = ""
    content_access_mode: str = ""
    url_web: str = ""
    url_api: str = ""
    id_cert_serial: str = ""
    id_cert_expires: datetime | None = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["id_cert_expires"] = _iso(self.id_cert_expires)
        return data


@dataclass
class Manifest:
    version: str
    created: datetime
    principal: str
    distributor: Distributor
    products: dict[str, Product]
    entitlements: list[Entitlement]
    entries: int = 0
    unpacked_bytes: int = 0

    def to_bytes(self) -> bytes:
        """Compressed JSON for a waiting job (holds nothing secret)."""
        data = asdict(self)
        data["created"] = _iso(self.created)
        data["distributor"] = self.distributor.as_dict()
        for ent in data["entitlements"]:
            ent["start"], ent["end"] = _iso(ent["start"]), _iso(ent["end"])
        return zlib.compress(json.dumps(data).encode(), 1)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Manifest:
        data = json.loads(zlib.decompress(blob))
        dist = data.pop("distributor")
        dist["id_cert_expires"] = _from_iso(dist["id_cert_expires"])
        return cls(
            version=data["version"], created=_from_iso(data["created"]), principal=data["principal"],
            distributor=Distributor(**dist),
            products={sku: Product(**p) for sku, p in data["products"].items()},
            entitlements=[Entitlement(**{**e, "start": _from_iso(e["start"]), "end": _from_iso(e["end"])})
                          for e in data["entitlements"]],
            entries=data["entries"], unpacked_bytes=data["unpacked_bytes"])


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# --- The outer zip ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Archive:
    export: bytes  # the exact bytes of consumer_export.zip (what the signature covers)
    signature: bytes
    sha256: str  # of the whole upload
    size: int


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
               OSError, zlib.error, ValueError, KeyError, UnicodeDecodeError)


def _zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise InvalidManifest(f"{what} is not a readable zip file ({exc}); "
                              "export the manifest again and upload the .zip unchanged.") from None


def _safe_name(name: str, what: str) -> None:
    """Refuse names that would escape a directory if someone ever extracted them (zip-slip)."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts
            or re.match(r"^[A-Za-z]:", name)):
        raise InvalidManifest(f"{what} holds an entry with an unsafe name ({name!r}); "
                              "a manifest never does.")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """One entry, at most ``limit`` bytes unpacked whatever its header claims."""
    if info.flag_bits & 0x1:
        raise InvalidManifest(f"{what}: {info.filename} is encrypted.")
    if info.file_size > limit:
        raise InvalidManifest(f"{what}: {info.filename} is {info.file_size} bytes unpacked, more than "
                              f"the limit of {limit} bytes.")
    try:
        with zf.open(info) as stream:
            data = stream.read(limit + 1)
    except _ZIP_ERRORS as exc:
        raise InvalidManifest(f"{what}: {info.filename} cannot be read ({exc}); the file is damaged "
                              "or truncated.") from None
    if len(data) > limit:
        raise InvalidManifest(f"{what}: {info.filename} unpacks to more than {limit} bytes.")
    return data


def _entries(zf: zipfile.ZipFile, what: str) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise InvalidManifest(f"{what} holds {len(infos)} files, more than the limit of {MAX_ENTRIES}.")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _safe_name(info.filename, what)
        if info.filename in by_name:
            raise InvalidManifest(f"{what} holds {info.filename} twice.")
        by_name[info.filename] = info
    return by_name


def open_archive(data: bytes, max_bytes: int) -> Archive:
    """The outer zip: exactly ``consumer_export.zip`` and a non-empty ``signature``."""
    if not data:
        raise InvalidManifest("The upload is empty.")
    if len(data) > max_bytes:
        raise InvalidManifest(f"The upload is {len(data)} bytes, more than the limit of {max_bytes}.")
    what = "The manifest"
    zf = _zip(data, what)
    entries = _entries(zf, what)
    unexpected = sorted(set(entries) - {EXPORT, SIGNATURE})
    if unexpected:
        raise InvalidManifest(f"{what} holds an unexpected file ({unexpected[0]}); a manifest holds "
                              f"only {EXPORT} and {SIGNATURE}.")
    if EXPORT not in entries:
        raise InvalidManifest(f"{what} does not contain {EXPORT}: this is not a subscription manifest.")
    if SIGNATURE not in entries:
        raise InvalidManifest(f"{what} does not contain the required {SIGNATURE} file.")
    signature = _read(zf, entries[SIGNATURE], MAX_SIGNATURE_BYTES, what)
    if not signature:
        raise InvalidManifest(f"The {SIGNATURE} file of the manifest is empty.")
    # A zip stored inside a zip barely shrinks: its unpacked size is close to the upload's.
    export = _read(zf, entries[EXPORT], 2 * max_bytes, what)
    return Archive(export=export, signature=signature, sha256=hashlib.sha256(data).hexdigest(),
                   size=len(data))


# --- Values -----------------------------------------------------------------------------------

def _no_constants(name: str):
    raise ValueError(f"{name} is not a number")


def _json(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data, parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise InvalidManifest(f"{where} is not valid JSON ({str(exc)[:200]}).") from None
    if not isinstance(value, dict):
        raise InvalidManifest(f"{where} must hold a JSON object.")
    return value


def _text(value, where: str, max_length: int = 255, required: bool = False) -> str:
    """A string field: numbers become text (ids such as 69), null becomes ""."""
    if value is None or value == "":
        if required:
            raise InvalidManifest(f"{where} is missing.")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise InvalidManifest(f"{where} must be a string.")
    text = str(value).strip() if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise InvalidManifest(f"{where} contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidManifest(f"{where} is not valid Unicode text.") from None
    if len(text) > max_length:
        raise InvalidManifest(f"{where} is longer than {max_length} characters.")
    if required and not text:
        raise InvalidManifest(f"{where} is missing.")
    return text


def parse_date(value, where: str, required: bool = True) -> datetime | None:
    """Both Candlepin formats: ``2017-11-21T16:01:05.324+0000`` and ``...+00:00`` (and Z)."""
    if value is None or value == "":
        if required:
            raise InvalidManifest(f"{where} is missing.")
        return None
    match = _DATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidManifest(f"{where} is not a date-time ({str(value)[:40]!r}).")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if not 1900 <= int(year) <= 9999:
        raise InvalidManifest(f"{where} is outside the years 1900-9999.")
    tz = UTC
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          int((fraction or "0").ljust(6, "0")[:6]), tzinfo=tz)
    except ValueError as exc:
        raise InvalidManifest(f"{where} is not a valid date-time ({exc}).") from None
    return moment.astimezone(UTC)


def _serial(value, where: str) -> str:
    """Certificate serials reach 9.2e18 (> 2**53): kept as decimal text, never a float."""
    if isinstance(value, dict):
        value = value.get("serial", value.get("id"))
    if value is None or value == "":
        return ""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise InvalidManifest(f"{where} is not a certificate serial number.")
    if len(str(value)) > 40:
        raise InvalidManifest(f"{where} is longer than 40 digits.")
    return str(int(value))


def _attributes(raw, where: str) -> dict[str, str]:
    """The list form ``[{name, value, ...}]`` (every real file) or a map; values as strings."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = []
        for item in raw:
            if not isinstance(item, dict) or "name" not in item:
                raise InvalidManifest(f"{where}: an attribute must be an object with a name.")
            pairs.append((item.get("name"), item.get("value")))
    else:
        raise InvalidManifest(f"{where} must be a list of attributes.")
    attributes: dict[str, str] = {}
    for name, value in pairs:
        name = _text(name, f"{where}: an attribute name", 255, required=True)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (dict, list)):
            raise InvalidManifest(f"{where}: attribute {name} must be a plain value.")
        attributes[name] = _text(value, f"{where}: attribute {name}", MAX_ATTRIBUTE_CHARS)
    return attributes


def _quantity(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidManifest(f"{where} must be a whole number.")
    if value < 0:
        return -1  # Candlepin: negative means unlimited
    if not 1 <= value <= MAX_QUANTITY:
        raise InvalidManifest(f"{where} must be between 1 and {MAX_QUANTITY} (got {value}).")
    return value


def _refs(items, where: str, key: str = "productId") -> list[tuple[str, str]]:
    """(id, name) of nested product references: ``{productId, productName}`` or full objects."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidManifest(f"{where} must be a list.")
    refs = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidManifest(f"{where} must hold objects.")
        sku = _text(item.get(key, item.get("id")), f"{where}: a product id", 64, required=True)
        refs.append((sku, _text(item.get("productName", item.get("name")), f"{where}: {sku} name")))
    return refs


# --- The inner zip ----------------------------------------------------------------------------

class _Catalog:
    """Products as read from ``products/`` and merged with what the pools say (Candlepin's
    ProductImporter + EntitlementImporter: provided and derived products from either place)."""

    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.from_file: set[str] = set()

    def ensure(self, sku: str, name: str = "", attributes: dict | None = None) -> Product:
        product = self.products.get(sku)
        if product is None:
            product = self.products[sku] = Product(sku=sku, name=name or sku, attributes=attributes or {})
        return product

    def provide(self, product: Product, refs: list[tuple[str, str]]) -> None:
        for sku, name in refs:
            self.ensure(sku, name)
            if sku not in product.provided:
                product.provided.append(sku)

    def add_file(self, data: dict, where: str) -> None:
        sku = _text(data.get("id"), f"{where}: id", 64, required=True)
        product = self.products.get(sku)
        name = _text(data.get("name"), f"{where}: name") or sku
        attributes = _attributes(data.get("attributes"), f"{where}: attributes")
        if product is None:
            product = self.products[sku] = Product(sku=sku, name=name, attributes=attributes)
        else:  # created earlier as a nested reference: the file wins
            product.name, product.attributes = name, attributes
        self.from_file.add(sku)
        # Candlepin 4.x nests provided and derived products (full objects) in the SKU product.
        self.provide(product, _refs(data.get("providedProducts"), f"{where}: providedProducts", "id"))
        derived = data.get("derivedProduct")
        if derived is not None:
            if not isinstance(derived, dict):
                raise InvalidManifest(f"{where}: derivedProduct must be an object.")
            (dsku, dname), = _refs([derived], f"{where}: derivedProduct", "id")
            nested = self.ensure(dsku, dname, _attributes(derived.get("attributes"),
                                                           f"{where}: derivedProduct attributes"))
            self.provide(nested, _refs(derived.get("providedProducts"),
                                       f"{where}: derivedProduct providedProducts", "id"))
            product.derived = dsku


def _entitlement(data: dict, where: str, catalog: _Catalog) -> Entitlement:
    pool = data.get("pool")
    if not isinstance(pool, dict):
        raise InvalidManifest(f"{where}: pool is missing.")
    sku = _text(pool.get("productId"), f"{where}: pool.productId", 64, required=True)
    if sku not in catalog.from_file:
        raise InvalidManifest(f"{where}: unable to find product with ID {sku} in products/.")
    product = catalog.products[sku]
    catalog.provide(product, _refs(pool.get("providedProducts"), f"{where}: pool.providedProducts"))
    derived = _text(pool.get("derivedProductId"), f"{where}: pool.derivedProductId", 64) or product.derived
    if derived:
        derived_product = catalog.ensure(
            derived, _text(pool.get("derivedProductName"), f"{where}: pool.derivedProductName"))
        catalog.provide(derived_product, _refs(pool.get("derivedProvidedProducts"),
                                               f"{where}: pool.derivedProvidedProducts"))
        product.derived = product.derived or derived
    start = parse_date(data.get("startDate"), f"{where}: startDate")
    end = parse_date(data.get("endDate"), f"{where}: endDate")
    if end <= start:
        raise InvalidManifest(f"{where}: endDate is not after startDate.")
    certificates = data.get("certificates") or []
    if not isinstance(certificates, list):
        raise InvalidManifest(f"{where}: certificates must be a list.")
    first = certificates[0] if certificates else {}
    if not isinstance(first, dict):
        raise InvalidManifest(f"{where}: a certificate must be an object.")
    return Entitlement(
        id=_text(data.get("id"), f"{where}: id", 64, required=True),
        pool_id=_text(pool.get("id"), f"{where}: pool.id", 64, required=True),
        product=sku, derived=derived or None,
        quantity=_quantity(data.get("quantity"), f"{where}: quantity"), start=start, end=end,
        contract_number=_text(pool.get("contractNumber"), f"{where}: pool.contractNumber", 64),
        account_number=_text(pool.get("accountNumber"), f"{where}: pool.accountNumber", 64),
        order_number=_text(pool.get("orderNumber"), f"{where}: pool.orderNumber", 64),
        cert_serial=_serial(first.get("serial"), f"{where}: certificates[0].serial"),
    )


def _distributor(consumer: dict, upstream: dict | None) -> Distributor:
    where = "export/consumer.json"
    kind = consumer.get("type")
    owner = consumer.get("owner")
    dist = Distributor(
        uuid=_text(consumer.get("uuid"), f"{where}: uuid", 64, required=True),
        name=_text(consumer.get("name"), f"{where}: name"),
        type=_text(kind.get("label"), f"{where}: type.label", 64) if isinstance(kind, dict) else "",
        owner_key=_text(owner.get("key"), f"{where}: owner.key") if isinstance(owner, dict) else "",
        content_access_mode=_text(consumer.get("contentAccessMode"), f"{where}: contentAccessMode", 64),
        url_web=_text(consumer.get("urlWeb"), f"{where}: urlWeb"),
        url_api=_text(consumer.get("urlApi"), f"{where}: urlApi"),
    )
    if upstream is not None:
        where = "export/upstream_consumer"
        serial = upstream.get("serial")
        dist.id_cert_serial = _serial(serial, f"{where}: serial")
        if isinstance(serial, dict):
            dist.id_cert_expires = parse_date(serial.get("expiration"), f"{where}: serial.expiration",
                                              required=False)
    return dist


def parse_export(export: bytes) -> Manifest:
    """What sam needs from ``consumer_export.zip``; ignores rules, consumer types, CDNs,
    distributor versions and every certificate (manifest.md section 10, item 1)."""
    what = EXPORT
    zf = _zip(export, what)
    entries = _entries(zf, what)
    total = 0
    for name, info in entries.items():
        if not any(p.fullmatch(name) for p in _LAYOUT):
            raise InvalidManifest(f"{what} holds an unexpected file ({name}).")
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise InvalidManifest(f"{what} unpacks to {total} bytes, more than the limit of "
                              f"{MAX_UNPACKED_BYTES}.")
    for required in ("export/meta.json", "export/consumer.json"):
        if required not in entries:
            raise InvalidManifest(f"{what} does not contain {required}.")
    if not any(n.startswith("export/consumer_types/") for n in entries):
        raise InvalidManifest(f"{what} does not contain the export/consumer_types/ directory.")

    def load(name: str) -> dict:
        return _json(_read(zf, entries[name], MAX_ENTRY_BYTES, what), name)

    def files(folder: str) -> list[str]:
        return sorted(n for n in entries if n.startswith(f"export/{folder}/") and n.endswith(".json"))

    products, ents = files("products"), files("entitlements")
    if products and not any(n.startswith("export/entitlements/") for n in entries):
        raise InvalidManifest(f"{what} has products/ but no entitlements/ directory.")
    meta = load("export/meta.json")
    consumer = load("export/consumer.json")
    uppers = files("upstream_consumer")
    distributor = _distributor(consumer, load(uppers[0]) if uppers else None)
    catalog = _Catalog()
    for name in products:
        catalog.add_file(load(name), name)
    entitlements = []
    seen: set[str] = set()
    for name in ents:
        ent = _entitlement(load(name), name, catalog)
        if ent.id in seen:
            raise InvalidManifest(f"{name}: entitlement {ent.id} appears twice.")
        seen.add(ent.id)
        entitlements.append(ent)
    return Manifest(
        version=_text(meta.get("version"), "export/meta.json: version", 64),
        created=parse_date(meta.get("created"), "export/meta.json: created"),
        principal=_text(meta.get("principalName"), "export/meta.json: principalName"),
        distributor=distributor, products=dict(sorted(catalog.products.items())),
        entitlements=entitlements, entries=len(entries), unpacked_bytes=total)
