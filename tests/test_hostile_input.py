"""Every URL pattern × every hostile value (performance.md R5, R7): never a 5xx, nothing stored.

The endpoints are enumerated, not listed: Django's URL resolver gives every pattern (API, web
UI, Candlepin under both prefixes, the operators' admin), the OpenAPI schema gives each API
operation's methods, query parameters and body fields, and the web UI's forms give their fields.
Path parameters are filled with the ids and keys of a seeded org, then each hostile value goes
where the endpoint takes input: the path, the query, a JSON body, form fields or an uploaded
file. Both as the org's admin (session, plus Basic for /candlepin and /rhsm) and anonymously.
An endpoint added later is covered without touching this file; ``BASES`` only gives known
endpoints a valid body to poison one field at a time, so the hostile value gets deep.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

import pytest
from django import forms as django_forms
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.regex_helper import normalize
from drf_spectacular.generators import SchemaGenerator

from hypervisors.models import Report
from orgs import services as orgs
from orgs.forms import MemberForm, SettingsForm, TokenForm, VirtWhoForm
from subscriptions import services as subs
from subscriptions.models import Entitlement, Pool
from tests.scenario import acme, guest, physical, report, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "hostile-pass-word-1"
DEEP = "[" * 5000 + "]" * 5000
# The hostile values, by the kind of input they attack.
TEXT = {"nul": "a\x00b", "surrogate": "a\ud800b"}
INTEGER = {"2^64": 2**64, "2^40": 2**40, "3e9": 3e9}
DATES = {"year1": "0001-01-01T00:00:00+05:00", "year10000": "10000-01-01T00:00:00Z"}
PATH_VALUES = {**TEXT, "2^64": str(2**64), **DATES}


def _wire(value) -> str:
    """Percent-encoded as a client would send it (a surrogate as its WTF-8 bytes)."""
    return quote_from_bytes(str(value).encode("utf-8", "surrogatepass"), safe="")


# --- The seeded org and its ids -------------------------------------------------------------

@dataclass
class World:
    ids: dict[str, str]
    admin: Client
    anonymous: Client
    basic: str


def _seed() -> World:
    org = acme()
    subscribe(org, "RHEL-4G", 2)
    vdc = subscribe(org, "VDC", 1)
    host = report(org, "esx1", ["g1", "g2"], reporter_id="r1")
    guest(org, "g1")
    box = physical(org, "box")
    pool = Pool.objects.get(subscription=vdc, type=Pool.Type.NORMAL)
    ent = Entitlement.objects.filter(system=host).first() or subs.attach(org, host.uuid, pool.uuid)
    admin = orgs.set_member_role(org, "org-admin", "admin", password=PASSWORD)
    orgs.set_member_role(org, "org-viewer", "viewer", password=PASSWORD)
    token, _ = orgs.create_token(org, "virt-who", "reporter", created_by=admin)
    job = Report.objects.create(org=org, reporter_id="r1", state=Report.State.FINISHED,
                                result={"created": [], "updated": [], "unchanged": [],
                                        "failedUpdate": []})
    orgs.create_org("OTHER", "Other Corp")
    browser = Client(raise_request_exception=False)
    browser.force_login(get_user_model().objects.get(username="org-admin"))
    credentials = base64.b64encode(f"org-admin:{PASSWORD}".encode()).decode()
    ids = {
        "org_key": "ACME", "key": "ACME", "owner_key": "ACME", "username": "org-admin",
        "systems": str(box.uuid), "hypervisors": str(host.uuid), "reports": str(job.uuid),
        "subscriptions": str(vdc.uuid), "pools": str(pool.uuid), "entitlements": str(ent.uuid),
        "entitlement": str(ent.uuid), "tokens": str(token.pk), "events": "1",
        "sku": "VDC", "job_id": str(job.uuid), "path": "no/such/thing",
        "pool": str(pool.uuid), "system": str(box.uuid), "product_pk": str(
            org.products.get(sku="VDC").pk),
    }
    return World(ids=ids, admin=browser, anonymous=Client(raise_request_exception=False),
                 basic=f"Basic {credentials}")


def _path_value(world: World, name: str, before: str) -> str:
    """A valid value for path parameter ``name``; ``uuid``/``pk`` by the collection before it."""
    if name in ("uuid", "pk", "id"):
        collection = before.rstrip("/").rsplit("/", 1)[-1]
        return world.ids.get(collection, "1")
    return world.ids.get(name, "1")


# --- Endpoints ------------------------------------------------------------------------------

@dataclass
class Body:
    kind: str  # json | form | multipart
    base: dict
    fields: dict[str, str]  # name → text | integer | date | object | list | list_of_objects


@dataclass
class Endpoint:
    template: str  # "/api/v1/orgs/%(org_key)s/systems/%(uuid)s/"
    params: list[str]
    view: object
    methods: list[str] = field(default_factory=lambda: ["GET", "POST"])
    query: dict[str, str] = field(default_factory=dict)  # name → kind
    bodies: dict[str, Body] = field(default_factory=dict)  # method → body
    raw_bodies: dict[str, list[tuple[str, bytes, str]]] = field(default_factory=dict)

    @property
    def surface(self) -> str:
        for prefix, name in (("/api/", "api"), ("/candlepin/", "candlepin"), ("/rhsm/", "candlepin"),
                             ("/subscription/", "candlepin"),
                             ("/admin/", "admin")):
            if self.template.startswith(prefix):
                return name
        return "ui"


def _walk(patterns, prefix: str = "") -> Iterator[tuple[URLPattern, str]]:
    for pattern in patterns:
        regex = pattern.pattern.regex.pattern.removeprefix("^")
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + regex)
        else:
            yield pattern, prefix + regex


def url_patterns() -> list[Endpoint]:
    """Every pattern of the URL resolver, as a template with named placeholders."""
    endpoints = []
    for pattern, regex in _walk(get_resolver().url_patterns):
        template, params = normalize(regex.replace(r"\Z", "").replace("$", ""))[0]
        endpoints.append(Endpoint("/" + template, list(params), pattern.callback))
    return endpoints


def _schema_key(template: str) -> str:
    return re.sub(r"%\([^)]+\)s|\{[^}]+\}", "{}", template)


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _kind(schema: dict, prop: dict) -> str:
    prop = _resolve(schema, prop)
    kind = prop.get("type")
    if kind == "integer":
        return "integer"
    if kind == "string" and prop.get("format") in ("date-time", "date"):
        return "date"
    if kind == "object":
        return "object"
    if kind == "array":
        items = _resolve(schema, prop.get("items", {}))
        return "list_of_objects" if items.get("type") == "object" else "list"
    return "text"


def _example(kind: str):
    return {"integer": 1, "date": "2030-01-01T00:00:00Z", "object": {}, "list": [],
            "list_of_objects": []}.get(kind, "x")


def apply_openapi(endpoints: list[Endpoint], world: World) -> None:
    """Methods, query parameters and JSON bodies of the API operations, from the schema."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = {_schema_key(path): ops for path, ops in schema["paths"].items()}
    for endpoint in endpoints:
        ops = operations.get(_schema_key(endpoint.template))
        if ops is None:
            continue
        endpoint.methods = [m.upper() for m in ops if m in ("get", "post", "put", "patch", "delete")]
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if param["in"] == "query":
                    endpoint.query[param["name"]] = _kind(schema, param.get("schema", {}))
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                props = _resolve(schema, content["application/json"]["schema"]).get("properties", {})
                fields = {name: _kind(schema, prop) for name, prop in props.items()
                          if not prop.get("readOnly")}
                base = BASES.get((method.upper(), _schema_key(endpoint.template)))
                if base is None:
                    required = _resolve(schema, content["application/json"]["schema"]).get(
                        "required", [])
                    base = {name: _example(fields[name]) for name in required if name in fields}
                endpoint.bodies[method.upper()] = Body("json", _fill(base, world), fields)


def _fill(base: dict, world: World) -> dict:
    return {k: (world.ids[v[1:]] if isinstance(v, str) and v.startswith("@") else v)
            for k, v in base.items()}


# Valid bodies of known API operations ("@name": an id of the seeded org).
BASES = {
    ("POST", "/api/v1/orgs/"): {"key": "NEWORG", "name": "New"},
    ("PATCH", "/api/v1/orgs/{}/"): {"name": "ACME Corp"},
    ("POST", "/api/v1/orgs/{}/entitlements/"): {"system": "@system", "pool": "@pool", "quantity": 1},
    ("POST", "/api/v1/orgs/{}/members/"): {"username": "newbie", "role": "viewer"},
    ("PATCH", "/api/v1/orgs/{}/members/{}/"): {"role": "admin"},
    ("POST", "/api/v1/orgs/{}/products/"): {"sku": "NEW", "name": "New"},
    ("PATCH", "/api/v1/orgs/{}/products/{}/"): {"name": "Virtual Datacenter"},
    ("POST", "/api/v1/orgs/{}/subscriptions/"): {"product": "VDC", "quantity": 1},
    ("PATCH", "/api/v1/orgs/{}/subscriptions/{}/"): {"quantity": 1},
    ("POST", "/api/v1/orgs/{}/systems/"): {"name": "box2"},
    ("PATCH", "/api/v1/orgs/{}/systems/{}/"): {"name": "box"},
    ("POST", "/api/v1/orgs/{}/tokens/"): {"name": "t2", "role": "reporter"},
}

# Integers that overflow a derived quantity (pool sizes come from these attributes).
EXTRA = {
    ("POST", "/api/v1/orgs/{}/products/"): [
        {"attributes": {"virt_limit": "999999999999"}},
        {"attributes": {"instance_multiplier": "99999999999"}}],
    ("PATCH", "/api/v1/orgs/{}/products/{}/"): [{"attributes": {"virt_limit": "999999999999"}}],
    ("POST", "/api/v1/orgs/{}/entitlements/"): [{"quantity": 3e9}],
    ("POST", "/api/v1/orgs/{}/subscriptions/"): [
        {"quantity": 3e9}, {"start": "9999-12-31T00:00:00Z"},
        {"start": "2030-01-01T00:00:00Z", "end": "2029-01-01T00:00:00Z"}],
}

IMPORT_ROW = {"product": "VDC", "quantity": 1, "start": "2025-01-01", "end": "2030-01-01",
              "contract_number": "C-9"}


def _import_documents() -> list[tuple[str, bytes, str]]:
    """Poisoned import files: (label, content, content type)."""
    docs = []
    for name, value in TEXT.items():
        for column in ("product", "contract_number", "start"):
            docs.append((f"json {column}={name}", json.dumps(
                {"subscriptions": [{**IMPORT_ROW, column: value}]}).encode(), "application/json"))
        docs.append((f"json product sku={name}", json.dumps(
            {"products": [{"sku": value, "name": "x", "attributes": {value: value}}]}).encode(),
            "application/json"))
    docs.append(("csv nul cell", (b"record,product,quantity,start,end,contract_number\n"
                                  b"subscription,VDC,1,2025-01-01,2030-01-01,C\x00-9\n"),
                 "text/csv"))
    docs.append(("csv surrogate", "record,product\nsubscription,V\ud800\n".encode(
        "utf-8", "surrogatepass"), "text/csv"))
    for name, value in {**DATES, "1899": "1899-12-31"}.items():
        docs.append((f"json start={name}", json.dumps(
            {"subscriptions": [{**IMPORT_ROW, "start": value}]}).encode(), "application/json"))
    docs.append(("json quantity=2^64", json.dumps(
        {"subscriptions": [{**IMPORT_ROW, "quantity": 2**64}]}).encode(), "application/json"))
    docs.append(("json quantity=3e9", b'{"subscriptions": [{"product": "VDC", "quantity": 3e9, '
                 b'"start": "2025-01-01", "end": "2030-01-01", "contract_number": "C-9"}]}',
                 "application/json"))
    docs.append(("json virt_limit", json.dumps({"products": [
        {"sku": "BIG", "name": "Big", "attributes": {"virt_limit": "999999999999"}}]}).encode(),
        "application/json"))
    docs.append(("json deep", DEEP.encode(), "application/json"))
    return docs


def _report(hv="esx9", name="esx9", facts=None, guests=("g9",)) -> dict:
    return {"hypervisors": [{"hypervisorId": {"hypervisorId": hv}, "name": name,
                             "facts": facts or {"hypervisor.type": "VMware ESXi"},
                             "guestIds": [{"guestId": g, "attributes": {"active": 1}}
                                          for g in guests]}]}


def _checkin_bodies() -> list[tuple[str, bytes, str]]:
    bodies = [("deep", DEEP.encode(), "application/json")]
    for name, value in TEXT.items():
        for label, doc in (("hypervisorId", _report(hv=value)), ("name", _report(name=value)),
                           ("fact value", _report(facts={"k": value})),
                           ("fact name", _report(facts={value: "v"})),
                           ("guest", _report(guests=(value,)))):
            bodies.append((f"{label}={name}", json.dumps(doc).encode(), "application/json"))
    return bodies


def _legacy_bodies() -> list[tuple[str, bytes, str]]:
    bodies = [("deep", DEEP.encode(), "application/json")]
    for name, value in TEXT.items():
        bodies.append((f"host={name}", json.dumps({value: ["g1"]}).encode(), "application/json"))
        bodies.append((f"guest={name}", json.dumps({"esx9": [value]}).encode(), "application/json"))
    return bodies


# Candlepin views: methods and query parameters (by view function name).
CANDLEPIN = {
    "status": (["GET"], {}),
    "root": (["GET"], {}),
    "user_owners": (["GET"], {}),
    "owner": (["GET"], {}),
    "owner_hypervisors": (["GET"], {"page": "integer", "per_page": "integer",
                                    "hypervisor_id": "text"}),
    "hypervisor_checkin": (["POST"], {"reporter_id": "text", "create_missing": "text"}),
    "hypervisor_heartbeat": (["PUT"], {"reporter_id": "text"}),
    "legacy_checkin": (["POST"], {"owner": "text", "create_missing": "text"}),
    "job": (["GET"], {"result_data": "text"}),
    "owner_pools": (["GET"], {"consumer": "text", "listall": "text", "matches": "text",
                              "activeon": "date"}),
    "entitlements": (["GET", "POST", "DELETE"], {"pool": "text", "quantity": "integer",
                                                 "entitle_date": "date", "exclude": "text"}),
    "certificates": (["GET", "PUT"], {"serials": "text"}),
}


def _form_fields(form_class) -> dict[str, str]:
    kinds = {}
    for name, form_field in form_class.base_fields.items():
        if isinstance(form_field, django_forms.IntegerField):
            kinds[name] = "integer"
        elif isinstance(form_field, (django_forms.DateTimeField, django_forms.DateField)):
            kinds[name] = "date"
        elif isinstance(form_field, django_forms.FileField):
            continue
        else:
            kinds[name] = "text"
    return kinds


def _ui_forms(world: World) -> dict[str, tuple[dict[str, str], dict[str, Body]]]:
    """(query parameters, POST bodies) of web UI pages by URL template."""
    from hypervisors.filters import HypervisorFilter, SystemFilter
    from hypervisors.forms import ReportFilterForm
    from subscriptions.forms import PoolFilterForm, SubscriptionCreateForm, SubscriptionEditForm

    org = "/o/%(org_key)s/"
    page = {"page": "integer"}
    settings_base = {k: ("on" if v is True else "" if v is False else v)
                     for k, v in SettingsForm.initial_for(world_org()).items()}
    virtwho = {"hypervisor_type": "esx", "section": "esx-1", "server": "vc", "username": "u",
               "hypervisor_id": "hostname", "interval": "3600", "reporter_id": "r9",
               "rhsm_hostname": "sam", "rhsm_port": "8443"}
    return {
        "/accounts/login/": ({"next": "text"}, {"POST": Body(
            "form", {"username": "org-admin", "password": "wrong-password"},
            {"username": "text", "password": "text"})}),
        org: ({}, {}),
        org + "hypervisors/": ({**page, **_form_fields(type(HypervisorFilter().form))}, {}),
        org + "systems/": ({**page, **_form_fields(type(SystemFilter().form))}, {}),
        org + "hypervisors/export.csv": (_form_fields(type(HypervisorFilter().form)), {}),
        org + "systems/export.csv": (_form_fields(type(SystemFilter().form)), {}),
        org + "subscriptions/export.csv": ({"product": "text"}, {}),
        org + "reports/": ({**page, **_form_fields(ReportFilterForm)}, {}),
        org + "pools/": ({**page, **_form_fields(PoolFilterForm)}, {}),
        org + "subscriptions/": ({**page, "product": "text"}, {}),
        org + "products/": ({**page, "q": "text"}, {}),
        org + "hypervisors/%(uuid)s/": ({"guests": "integer"}, {}),
        org + "subscriptions/%(uuid)s/": (page, {}),
        org + "pools/%(uuid)s/": (page, {}),
        org + "hypervisors/%(uuid)s/attach/": ({"pool": "text"}, {"POST": Body(
            "form", {"pool": world.ids["pool"]}, {"pool": "text"})}),
        org + "settings/": ({}, {"POST": Body("form", settings_base, _form_fields(SettingsForm))}),
        org + "members/": ({}, {
            "POST": Body("form", {"username": "newbie", "role": "viewer"}, _form_fields(MemberForm)),
            "POST:remove": Body("form", {"action": "remove", "username": "org-viewer"},
                                {"username": "text"})}),
        org + "tokens/": ({}, {
            "POST": Body("form", {"name": "t9", "role": "reporter"}, _form_fields(TokenForm)),
            "POST:revoke": Body("form", {"action": "revoke", "token": world.ids["tokens"]},
                                {"token": "integer"})}),
        org + "setup/": ({}, {"POST": Body("form", virtwho, _form_fields(VirtWhoForm))}),
        org + "setup/download/": ({}, {"POST": Body("form", {"config": "x=1", "filename": "a.conf"},
                                                    {"config": "text", "filename": "text"})}),
        org + "subscriptions/new/": ({}, {"POST": Body(
            "form", {"product": world.ids["product_pk"], "quantity": "1"},
            _form_fields(SubscriptionCreateForm))}),
        org + "subscriptions/%(uuid)s/edit/": ({}, {"POST": Body(
            "form", {"quantity": "1", "start": "2025-01-01T00:00:00", "end": "2030-01-01T00:00:00"},
            _form_fields(SubscriptionEditForm))}),
    }


def world_org():
    from orgs.models import Organization

    return Organization.objects.get(key="ACME")


def endpoints(world: World) -> list[Endpoint]:
    found = url_patterns()
    apply_openapi(found, world)
    ui = _ui_forms(world)
    for endpoint in found:
        name = getattr(endpoint.view, "__name__", "")
        if endpoint.surface == "candlepin":
            endpoint.methods, endpoint.query = CANDLEPIN.get(name, (["GET", "POST"], {}))
            if name == "hypervisor_checkin":
                endpoint.raw_bodies["POST"] = _checkin_bodies()
            elif name == "legacy_checkin":
                endpoint.raw_bodies["POST"] = _legacy_bodies()
            elif name not in CANDLEPIN and name != "not_found":
                # An endpoint added later: a JSON body with the hostile values where a client
                # would put text.
                endpoint.raw_bodies["POST"] = [("deep", DEEP.encode(), "application/json")] + [
                    (f"body={n}", json.dumps({"name": v, "facts": {"k": v}}).encode(),
                     "application/json") for n, v in TEXT.items()]
        elif endpoint.surface == "ui" and endpoint.template in ui:
            endpoint.query, endpoint.bodies = ui[endpoint.template]
            endpoint.methods = ["GET", *{m.split(":")[0] for m in endpoint.bodies}]
        if endpoint.template.endswith("/import/"):
            docs = _import_documents()
            if endpoint.surface == "api":
                endpoint.raw_bodies["POST"] = docs
            endpoint.raw_bodies["MULTIPART"] = docs
    return found


# --- Hostile requests -----------------------------------------------------------------------

@dataclass
class Attempt:
    label: str
    method: str
    url: str
    data: bytes = b""
    content_type: str = "application/octet-stream"
    multipart: dict | None = None


def _url(endpoint: Endpoint, world: World, override: dict[str, str] | None = None) -> str:
    values = {}
    for name in endpoint.params:
        before = endpoint.template.split(f"%({name})s")[0]
        values[name] = _wire(override[name]) if override and name in override else quote_from_bytes(
            _path_value(world, name, before).encode(), safe="/")
    return endpoint.template % values


def _poisoned(kind: str) -> dict[str, object]:
    """Hostile values for a field of this kind."""
    if kind == "integer":
        return {**INTEGER, **{k: v for k, v in TEXT.items()}}
    if kind == "date":
        return {**DATES, **TEXT}
    if kind == "object":
        return {f"{k} key": {v: "x"} for k, v in TEXT.items()} | {f"{k} value": {"k": v}
                                                                   for k, v in TEXT.items()}
    if kind == "list":
        return {k: [v] for k, v in TEXT.items()}
    if kind == "list_of_objects":
        return {k: [{"productId": v}] for k, v in TEXT.items()}
    return dict(TEXT)


def attempts(endpoint: Endpoint, world: World) -> Iterator[Attempt]:
    base_url = _url(endpoint, world)
    # Path: each parameter in turn.
    for name in endpoint.params:
        for label, value in PATH_VALUES.items():
            url = _url(endpoint, world, {name: value})
            for method in endpoint.methods:
                yield Attempt(f"path {name}={label}", method, url)
    # Query: text values in every parameter at once (and an unknown one), numbers and dates
    # in the parameters of that kind, one at a time.
    # (A surrogate sent in a URL arrives as U+FFFD, harmless text that a write would accept:
    # writes get the NUL only.)
    names = [*endpoint.query, "x"]
    for label, value in TEXT.items():
        query = "&".join(f"{n}={_wire(value)}" for n in names)
        for method in endpoint.methods:
            if method == "GET" or label == "nul":
                yield Attempt(f"query all={label}", method, f"{base_url}?{query}")
    for name, kind in endpoint.query.items():
        values = INTEGER if kind == "integer" else DATES if kind == "date" else {}
        for label, value in values.items():
            for method in endpoint.methods:
                if method == "GET":
                    yield Attempt(f"query {name}={label}", method, f"{base_url}?{name}={_wire(value)}")
    # Bodies: each field poisoned in turn on top of a valid body; a 5,000-deep document.
    for key, body in endpoint.bodies.items():
        method = key.split(":")[0]
        for name, kind in body.fields.items():
            for label, value in _poisoned(kind).items():
                data = {**body.base, name: value}
                if body.kind == "json":
                    yield Attempt(f"json {name}={label}", method, base_url,
                                  json.dumps(data).encode(), "application/json")
                elif not isinstance(value, (dict, list)) and label != "surrogate":
                    # (a form carries bytes: a surrogate arrives as U+FFFD, harmless text)
                    encoded = "&".join(f"{_wire(k)}={_wire(v)}" for k, v in data.items())
                    yield Attempt(f"form {name}={label}", method, base_url, encoded.encode(),
                                  "application/x-www-form-urlencoded")
        if body.kind == "json":
            yield Attempt("json deep", method, base_url, DEEP.encode(), "application/json")
            for extra in EXTRA.get((method, _schema_key(endpoint.template)), []):
                yield Attempt(f"json {extra}", method, base_url,
                              json.dumps({**body.base, **extra}).encode(), "application/json")
    for method, docs in endpoint.raw_bodies.items():
        for label, data, content_type in docs:
            if method == "MULTIPART":
                yield Attempt(f"upload {label}", "POST", base_url, multipart={
                    "file": _upload(label, data, content_type)})
            else:
                yield Attempt(f"body {label}", method, base_url, data, content_type)


def _upload(label: str, data: bytes, content_type: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    suffix = "csv" if content_type == "text/csv" else "json"
    return SimpleUploadedFile(f"hostile.{suffix}", data, content_type=content_type)


def send(client: Client, attempt: Attempt, extra: dict):
    if attempt.multipart is not None:
        for upload in attempt.multipart.values():
            upload.seek(0)
        return client.post(attempt.url, attempt.multipart, **extra)
    return client.generic(attempt.method, attempt.url, attempt.data,
                          content_type=attempt.content_type, **extra)


def row_counts() -> dict[str, int]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        counts = {}
        for table in sorted(tables):
            cursor.execute(f"SELECT COUNT(*) FROM {q(table)}")
            counts[table] = cursor.fetchone()[0]
    return counts


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_every_endpoint_refuses_every_hostile_value():
    world = _seed()
    found = endpoints(world)
    surfaces = {e.surface for e in found}
    assert {"api", "candlepin", "ui", "admin"} <= surfaces
    assert any(e.bodies for e in found if e.surface == "api"), "the OpenAPI schema gave no bodies"
    before = row_counts()
    failures: list[str] = []
    sent = 0
    started = time.monotonic()
    per_surface: dict[str, int] = {}
    for endpoint in found:
        for attempt in attempts(endpoint, world):
            per_surface[endpoint.surface] = per_surface.get(endpoint.surface, 0) + 2
            for actor, client in (("admin", world.admin), ("anonymous", world.anonymous)):
                extra = {"HTTP_AUTHORIZATION": world.basic} if (
                    actor == "admin" and endpoint.surface == "candlepin") else {}
                response = send(client, attempt, extra)
                sent += 1
                if response.status_code >= 500:
                    cause = getattr(response, "exc_info", None)
                    detail = repr(cause[1]) if cause else repr(response.content[:200])
                    failures.append(f"{actor} {attempt.method} {attempt.url[:120]} "
                                    f"[{attempt.label}] → {response.status_code} {detail}")
        after = row_counts()
        if after != before:
            changed = {t: (before[t], after[t]) for t in after if after[t] != before.get(t)}
            failures.append(f"{endpoint.template}: rows changed {changed}")
            before = after
    elapsed = time.monotonic() - started
    print(f"hostile matrix: {len(found)} URL patterns, {sent} requests {per_surface}, "
          f"{elapsed:.0f} s")
    assert not failures, "\n".join(failures[:60]) + f"\n({len(failures)} failures)"
