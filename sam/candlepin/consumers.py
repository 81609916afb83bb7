"""The Candlepin consumer API subscription-manager uses (consumer-api.md, rhsm-wire.md 3).

A wire adapter: authentication (identity certificate from ``orgs.certauth``, Basic from
``orgs.auth``), role checks, and Candlepin's shapes and status codes. Registration, updates and
deletion are the one system lifecycle in ``hypervisors.services``; identities in
``orgs.consumers``; compliance is the stored answer of ``subscriptions.compliance``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, cast, overload

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import parse_http_date_safe
from django.views.decorators.csrf import csrf_exempt

from hypervisors import services as lifecycle
from orgs import activation, consumers, content_access
from orgs.auth import BadCredentials, Throttled, basic_principal, check_throttle, record_failure
from orgs.certauth import ConsumerPrincipal, Gone, consumer_principal
from orgs.models import ConsumerIdentity, Organization, System
from orgs.services import has_role_perm
from sam import inputs
from sam.candlepin import dto
from sam.candlepin.auth import refusal
from sam.candlepin.http import JSON, ApiRequest, error, json_response, no_content, request_uuid, timestamp
from sam.errors import EntitlementRefused, NotFound
from sam.ids import parse_uuid
from subscriptions import compliance
from subscriptions import services as subscriptions
from subscriptions.content_access import note_client
from subscriptions.models import Entitlement

CHECKIN_EVERY = timedelta(minutes=1)
MAX_KEYS = 20
P = ParamSpec("P")
Principal = ConsumerPrincipal | None  # the consumer's own certificate, or None for an org member
ConsumerView = Callable[Concatenate[ApiRequest, System, Principal, P], HttpResponse]


class DjangoView(Protocol[P]):
    """What Django's URL resolver calls: the consumer's uuid comes as a keyword argument."""

    def __call__(self, request: HttpRequest, /, uuid: str, *args: P.args,
                 **kwargs: P.kwargs) -> HttpResponse: ...


class Refused(Exception):
    """An answer with a status (400, 403, 404) and a message the client prints."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _answer_errors(request: HttpRequest, call: Callable[[], HttpResponse]) -> HttpResponse:
    try:
        return call()
    except (BadCredentials, Throttled) as exc:
        return refusal(request, exc)
    except Gone as exc:
        return json_response(request, {"displayMessage": str(exc), "requestUuid": request_uuid(request),
                                       "deletedId": exc.uuid}, status=410)
    except Refused as exc:
        return error(request, exc.status, str(exc))
    except EntitlementRefused as exc:
        return error(request, 403, exc.message)
    except NotFound as exc:
        return error(request, 404, exc.messages[0])
    except ValidationError as exc:
        return error(request, 400, " ".join(exc.messages))


def _methods(request: HttpRequest, methods: Collection[str]) -> None:
    if request.method not in methods:
        raise Refused(405, f"Method {request.method} is not allowed here.")


def _json_body(request: HttpRequest, required: bool = True) -> JSON:
    raw = request.body
    if not raw.strip():
        if required:
            raise Refused(400, "The request body must be a JSON object.")
        return {}
    try:
        data = inputs.loads(raw, "The request body", strict=True)
    except ValueError:
        raise Refused(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Refused(400, "The request body must be a JSON object.")
    return data


# --- Who may act on a consumer ------------------------------------------------------------------

def _consumer(request: ApiRequest, uuid: str, perm: str) -> tuple[System, ConsumerPrincipal | None]:
    """The system ``uuid`` names, for its own certificate or an org member with ``perm``."""
    principal = consumer_principal(request)
    try:
        key = parse_uuid(uuid)
    except ValidationError:
        raise Refused(404, f"Unit with ID '{uuid}' could not be found.") from None
    if principal is not None:
        if principal.system.uuid != key:
            if consumers.deleted(key):
                raise Gone(str(key))
            raise Refused(403, "Insufficient permissions")
        return principal.system, principal
    user = basic_principal(request)
    system = (System.objects.select_related("org", "current_host").filter(uuid=key).first())
    if system is None:
        tomb = consumers.deleted(key)
        if tomb is not None and has_role_perm(user, "view_org", tomb.org):
            raise Gone(str(key))
        raise Refused(404, f"Unit with ID '{key}' could not be found.")
    org = system.org
    if not has_role_perm(user, "view_org", org):
        raise Refused(404, f"Unit with ID '{key}' could not be found.")
    if not has_role_perm(user, perm, org):
        raise Refused(403, "Insufficient permissions")
    request.api_user = user
    return system, None


def consumer_endpoint(*methods: str, write: tuple[str, ...] = ("PUT", "POST", "DELETE")
                      ) -> Callable[[ConsumerView[P]], DjangoView[P]]:
    """Method check, consumer (or org member) authentication and Candlepin errors."""

    def wrap(view: ConsumerView[P]) -> DjangoView[P]:
        @csrf_exempt
        @functools.wraps(view)
        def inner(request: HttpRequest, /, uuid: str, *args: P.args, **kwargs: P.kwargs) -> HttpResponse:
            api_request = cast(ApiRequest, request)

            def call() -> HttpResponse:
                _methods(request, methods)
                perm = "admin_org" if request.method in write else "view_org"
                system, principal = _consumer(api_request, uuid, perm)
                return view(api_request, system, principal, *args, **kwargs)

            return _answer_errors(request, call)

        return inner

    return wrap


def _identity(system: System) -> ConsumerIdentity | None:
    return ConsumerIdentity.objects.filter(system=system).first()


def _touch(system: System) -> None:
    """``lastCheckin``: written at most once a minute (keeps the row's updates rare)."""
    now = timezone.now()
    if system.last_checkin is None or now - system.last_checkin > CHECKIN_EVERY:
        System.objects.filter(pk=system.pk).update(last_checkin=now)
        system.last_checkin = now


def _consumer_answer(request: HttpRequest, system: System, identity: ConsumerIdentity | None,
                     status: int = 200) -> HttpResponse:
    count = Entitlement.objects.filter(system=system).count()
    return json_response(request, dto.consumer_json(system, identity, _wire_compliance(system),
                                                    count), status=status)


def disabled_compliance() -> JSON:
    """Candlepin's compliance of a consumer in SCA: ``disabled``, nothing to report (sam still
    accounts its coverage: the stored answer, shown in the UI and the API)."""
    return {"status": "disabled", "compliant": True, "compliantProducts": {},
            "partiallyCompliantProducts": {}, "partialStacks": {}, "nonCompliantProducts": [],
            "compliantUntil": None, "reasons": [], "productComplianceDateRanges": {},
            "date": compliance._iso(timezone.now())}


def _wire_compliance(system: System) -> JSON:
    if content_access.is_sca(system):
        return disabled_compliance()
    return compliance.answer_for(system)


# --- Registration -------------------------------------------------------------------------------

def _type(body: JSON) -> str:
    raw = body.get("type", "system")
    if isinstance(raw, dict):
        raw = raw.get("label", "system")
    if raw in (None, ""):
        raw = "system"
    if not isinstance(raw, str) or raw not in System.Type.values:
        raise Refused(400, f"No such unit type: {raw}")
    return raw


def _purpose(body: JSON) -> JSON:
    """System purpose and release from a consumer body (only the keys present)."""
    mapping = {"serviceLevel": "service_level", "role": "role", "usage": "usage",
               "addOns": "addons", "contentTags": "content_tags"}
    purpose = {field: body[key] for key, field in mapping.items() if key in body}
    if "releaseVer" in body:
        release = body["releaseVer"]
        if isinstance(release, dict):
            release = release.get("releaseVer")
        purpose["release_ver"] = release or ""
    return purpose


def _visible_org(key: str, user: Any) -> Organization:
    org = Organization.objects.filter(key=key).first()
    if org is None or not has_role_perm(user, "view_org", org):
        raise Refused(400, f"Organization {key} does not exist.")
    return org


@csrf_exempt
def register(request: HttpRequest) -> HttpResponse:
    """``POST /consumers?owner=K[&activation_keys=a,b]``: org admin (Basic, or a token as
    password), or activation keys without credentials."""

    def call() -> HttpResponse:
        _methods(request, ("POST",))
        owner = request.GET.get("owner", "").strip()
        key_names = [k.strip() for k in request.GET.get("activation_keys", "").split(",") if k.strip()]
        if key_names:
            if request.META.get("HTTP_AUTHORIZATION"):
                raise Refused(400, "Activation keys cannot be used with a username and password.")
            return _register_with_keys(request, owner, key_names[:MAX_KEYS])
        user = basic_principal(request)
        if not owner:
            raise Refused(400, "You must specify an organization for new units.")
        org = _visible_org(owner, user)
        if not has_role_perm(user, "admin_org", org):
            raise Refused(403, f"User {user.get_username()} cannot register systems in "
                               f"organization {org.key}.")
        body = _json_body(request)
        return _create(request, org, body, via=ConsumerIdentity.Via.PASSWORD,
                       registered_by=user.get_username(),
                       auto_attach=body.get("autoAttach") is True)

    return _answer_errors(request, call)


def _register_with_keys(request: HttpRequest, owner: str, names: list[str]) -> HttpResponse:
    throttle_name = f"activation-key@{owner}"[:150]
    check_throttle(request, throttle_name)  # a locked-out guesser costs nothing and learns nothing
    org = Organization.objects.filter(key=owner).first() if owner else None
    if org is None:
        record_failure(request, throttle_name)
        raise Refused(400, f"Organization {owner} does not exist.")
    keys = activation.keys_by_name(org, names)
    if not keys:
        record_failure(request, throttle_name)
        raise Refused(400, "None of the activation keys specified exist for this org.")
    body = _json_body(request)
    purpose = activation.purpose_of(keys)
    purpose.update({k: v for k, v in _purpose(body).items() if v})
    with transaction.atomic():
        response = _create(request, org, body, via=ConsumerIdentity.Via.ACTIVATION_KEY,
                           registered_by=",".join(k.name for k in keys)[:255],
                           auto_attach=False, purpose=purpose, answer=False)
        system = response
        subscriptions.apply_key_pools(system, keys)
    if any(k.auto_attach for k in keys) and system.autoheal:
        subscriptions.resolve_system(system.id, "registration")
    system = System.objects.select_related("org", "current_host").get(pk=system.pk)
    return _consumer_answer(request, system, _identity(system))


# The new system's Candlepin answer, or (``answer=False``) the system itself.
@overload
def _create(request: HttpRequest, org: Organization, body: JSON, *, via: str, registered_by: str,
            auto_attach: bool, purpose: JSON | None = None, answer: Literal[True] = True) -> HttpResponse: ...
@overload
def _create(request: HttpRequest, org: Organization, body: JSON, *, via: str, registered_by: str,
            auto_attach: bool, purpose: JSON | None = None, answer: Literal[False]) -> System: ...
def _create(request: HttpRequest, org: Organization, body: JSON, *, via: str, registered_by: str,
            auto_attach: bool, purpose: JSON | None = None, answer: bool = True) -> HttpResponse | System:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Refused(400, "System name cannot be null.")
    kind = _type(body)
    facts = body.get("facts") or {}
    installed = body.get("installedProducts") or []
    hv_id = None
    if kind == System.Type.HYPERVISOR:
        raw = body.get("hypervisorId")
        hv_id = raw.get("hypervisorId") if isinstance(raw, dict) else raw
        if not hv_id and isinstance(facts, dict):
            hv_id = facts.get("dmi.system.uuid")
        if not hv_id:
            raise Refused(400, "A hypervisor needs a hypervisorId or the fact dmi.system.uuid.")
    autoheal = body.get("autoheal", True)
    system = lifecycle.register_consumer(
        org, name, facts, installed, type=kind, hypervisor_id=hv_id,
        autoheal=autoheal if isinstance(autoheal, bool) else True, via=via,
        registered_by=registered_by, purpose=purpose if purpose is not None else _purpose(body),
        auto_attach=auto_attach)
    note_client(system, request.META, issue_now=True)
    if content_access.is_sca(system) and not auto_attach and system.autoheal:
        # A client shown SCA never attaches: sam accounts its coverage by itself.
        subscriptions.enqueue_resolution([system.id], "registration")
    if not answer:
        return system
    return _consumer_answer(request, system, system.identity)


# --- One consumer --------------------------------------------------------------------------------

@consumer_endpoint("GET", "PUT", "DELETE", "POST")
def consumer(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    identity = principal.identity if principal else _identity(system)
    if request.method == "GET":
        if identity is not None:
            identity = consumers.renew_if_due(identity)
        if principal:
            _touch(system)
            note_client(system, request.META)
            if content_access.is_sca(system):  # renewed a month before it ends, as identities
                content_access.ensure_certificate(system)
        return _consumer_answer(request, system, identity)
    if request.method == "PUT":
        return _update(request, system, principal)
    if request.method == "DELETE":
        who = (f"consumer {system.uuid}" if principal
               else request.api_user.get_username())
        lifecycle.delete_system(system.org, system.uuid, trigger="unregister", deleted_by=who)
        return no_content(request)
    # POST: identity --regenerate (also with an org admin's Basic credentials)
    if identity is None:
        raise Refused(400, f"Unit {system.uuid} has no identity certificate to regenerate.")
    identity = consumers.regenerate(identity)
    return _consumer_answer(request, system, identity)


def _update(request: HttpRequest, system: System, principal: ConsumerPrincipal | None) -> HttpResponse:
    body = _json_body(request, required=False)
    facts = body.get("facts")
    installed = body.get("installedProducts")
    autoheal = body.get("autoheal")
    if facts is not None and not isinstance(facts, dict):
        raise Refused(400, "facts must be an object.")
    name = body.get("name")
    updated = lifecycle.update_consumer(
        system, name=name if isinstance(name, str) and name.strip() else None, facts=facts,
        installed_products=installed, autoheal=autoheal if isinstance(autoheal, bool) else None,
        purpose=_purpose(body))
    _touch(system)
    if principal is not None:  # the client itself: its version and facts
        note_client(updated, request.META)
    return no_content(request)


@consumer_endpoint("GET")
def owner(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    return json_response(request, dto.owner_json(system.org, content_access.wire_mode(system)))


def _on_date(request: HttpRequest) -> datetime | None:
    raw = request.GET.get("on_date")
    if not raw:
        return None
    moment = parse_datetime(raw.strip().replace(" ", "+"))
    if moment is None:
        raise Refused(400, f"on_date {raw!r} is not an ISO-8601 date and time.")
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return inputs.check_datetime(moment, "on_date")


@consumer_endpoint("GET")
def compliance_view(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    moment = _on_date(request)
    if content_access.is_sca(system):
        return json_response(request, disabled_compliance())
    if moment is None:
        return json_response(request, compliance.answer_for(system))
    answer, _ = compliance.compute(system, moment)
    answer["date"] = compliance._iso(moment)
    return json_response(request, answer)


@consumer_endpoint("GET")
def purpose_compliance(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    return json_response(request, {"status": "not specified", "reasons": [],
                                   "nonCompliantRole": None, "nonCompliantUsage": None,
                                   "nonCompliantSLA": None, "nonCompliantAddOns": [],
                                   "compliantRole": {}, "compliantAddOns": {},
                                   "compliantUsage": {}, "compliantSLA": {},
                                   "date": compliance._iso(timezone.now())})


@consumer_endpoint("GET")
def content_overrides(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    return json_response(request, [])


@consumer_endpoint("GET")
def release(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    identity = principal.identity if principal else _identity(system)
    return json_response(request, {"releaseVer": (identity.release_ver or None) if identity else None})


@consumer_endpoint("GET")
def accessible_content(request: ApiRequest, system: System, principal: Principal) -> HttpResponse:
    """``GET /consumers/{uuid}/accessible_content`` (SCA only): the content certificate, or
    304 when it has not changed since ``If-Modified-Since``."""
    cert = content_access.certificate_of(system)
    if cert is None:
        raise Refused(404, f"Unit {system.uuid} has no content access certificate: it is not "
                           "in Simple Content Access mode.")
    since = parse_http_date_safe(request.META.get("HTTP_IF_MODIFIED_SINCE", ""))
    if since is not None and int(cert.issued.timestamp()) <= since:
        response = no_content(request)
        response.status_code = 304
        return response
    return json_response(request, {
        "contentListing": {str(cert.serial): content_access.content_listing(cert)},
        "lastUpdate": timestamp(cert.issued)})
