"""Issue 14: SCA presented to clients that require it (subscription-manager 1.30, RHEL 10), with
sam still accounting their coverage. Requests shaped as the 1.30.15 transcripts (its headers,
Basic registration, then the identity certificate) and the real ``rhsm==1.19.2`` client for
the older ones, against ``manage.py serve`` over TLS with a real worker.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from datetime import timedelta
from email.utils import format_datetime

from cryptography import x509
from django.test import Client
from django.utils import timezone

from hypervisors import services as mapping
from orgs import activation, content_access
from orgs import services as orgs
from orgs.models import ContentAccessCertificate, Organization, System
from subscriptions import services as subs
from subscriptions.models import Entitlement, EntitlementCertificate, Pool
from tests import rhsm_helper, workers
from tests import test_consumers as base
from tests.test_consumers import PASSWORD, as_consumer, facts, register

org = base.org  # org ACME (admin alice), tasks to the broker



pytestmark = rhsm_helper.WIRE_MARKS

SM130 = {"User-Agent": "RHSM/1.0 (cmd=subscription-manager)",
         "x-subscription-manager-version": "1.30.15-1",
         "Content-type": "application/json", "Accept": "application/json"}
RHEL10 = [{"productId": "479", "productName": "Red Hat Enterprise Linux for x86_64",
           "version": "10.0", "arch": "x86_64"}]
TYPE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.2312.9.8")


class Client130:
    """subscription-manager 1.30.15 as the transcripts show it: its headers on every request,
    Basic to register, its identity certificate afterwards."""

    def __init__(self, server, tmp_path, version: str = "1.30.15-1"):
        self.server, self.tmp_path = server, tmp_path
        self.headers = dict(SM130, **{"x-subscription-manager-version": version})
        self.consumer: dict | None = None

    def _context(self) -> ssl.SSLContext:
        context = self.server.ssl_context()
        if self.consumer is not None:
            cert, key = self.tmp_path / "sm130-cert.pem", self.tmp_path / "sm130-key.pem"
            cert.write_text(self.consumer["idCert"]["cert"])
            key.write_text(self.consumer["idCert"]["key"])
            context.load_cert_chain(str(cert), str(key))
        return context

    def call(self, method: str, path: str, body=None, headers=None, basic: bool = False):
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self._context(),
                                           timeout=30)
        sent = dict(self.headers, **(headers or {}))
        if basic:
            token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        conn.request(method, "/candlepin" + path,
                     body=json.dumps(body) if body is not None else None, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        return response.status, (json.loads(raw) if raw.strip() else None)

    def register(self, name: str, extra_facts: dict | None = None) -> dict:
        body = {"type": "system", "name": name,
                "facts": facts(**{"distribution.version": "10.0", **(extra_facts or {})}),
                "installedProducts": RHEL10, "contentTags": ["rhel-10"], "role": "",
                "addOns": [], "usage": "", "serviceLevel": "",
                "cryptographicCapabilities": {"keyAlgorithms": [], "signatureAlgorithms": []}}
        status, answer = self.call("POST", "/consumers?owner=ACME", body, basic=True)
        assert status == 200, answer
        self.consumer = answer
        return answer

    @property
    def uuid(self) -> str:
        return self.consumer["uuid"]


def _per_client(org: Organization) -> Organization:
    return orgs.update_org(org, content_access_mode=Organization.ContentAccess.PER_CLIENT)


def _admin_client() -> Client:
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    return client


def test_the_decision_in_one_place():
    assert content_access.requires_sca("1.30.15-1", {}) is True
    assert content_access.requires_sca("1.29.54-1", {"distribution.version": "10.0"}) is False
    assert content_access.requires_sca("", {"distribution.version": "10.1"}) is True
    assert content_access.requires_sca("unknown", {"distribution.version": "9.4"}) is False
    assert content_access.client_version(
        {"HTTP_USER_AGENT": "RHSM/1.0 (cmd=subscription-manager) subscription-manager/1.30.2"}
    ) == "1.30.2"
    assert content_access.client_version({"HTTP_X_SUBSCRIPTION_MANAGER_VERSION": "unknown"}) == ""


def test_per_client_org_shows_sca_to_130_and_entitlement_to_older(server, org, tmp_path):
    _per_client(org)
    sm = Client130(server, tmp_path)
    # Without this capability 1.30 never syncs its certificates after registering.
    assert "org_level_content_access" in sm.call("GET", "/status")[1]["managerCapabilities"]
    consumer = sm.register("rhel10")
    assert consumer["owner"]["contentAccessMode"] == "org_environment"
    system = System.objects.get(uuid=sm.uuid)
    assert (system.client_version, system.client_requires_sca) == ("1.30.15-1", True)

    # The transcript's calls after register: serials (the SCA certificate), owner, compliance.
    status, serials = sm.call("GET", f"/consumers/{sm.uuid}/certificates/serials")
    assert status == 200 and len(serials) == 1
    serial = serials[0]["serial"]
    status, certs = sm.call("GET", f"/consumers/{sm.uuid}/certificates?serials={serial}")
    assert status == 200 and [c["serial"]["serial"] for c in certs] == [serial]
    assert certs[0]["key"] == consumer["idCert"]["key"]
    parsed = x509.load_pem_x509_certificate(certs[0]["cert"].encode())
    assert parsed.serial_number == serial
    assert parsed.extensions.get_extension_for_oid(TYPE_OID).value.value[2:] == b"OrgLevel"
    assert "-----BEGIN ENTITLEMENT DATA-----" in certs[0]["cert"]
    assert sm.call("GET", f"/consumers/{sm.uuid}/owner")[1]["contentAccessMode"] == "org_environment"
    status, answer = sm.call("GET", f"/consumers/{sm.uuid}/compliance")
    assert status == 200 and answer["status"] == "disabled" and answer["reasons"] == []
    assert sm.call("GET", "/owners/ACME", basic=True)[1]["contentAccessMode"] == "org_environment"

    # accessible_content: the listing, then 304 while unchanged (If-Modified-Since).
    status, content = sm.call("GET", f"/consumers/{sm.uuid}/accessible_content")
    assert status == 200 and "".join(content["contentListing"][str(serial)]) == certs[0]["cert"]
    issued = ContentAccessCertificate.objects.get(system=system).issued
    since = format_datetime(issued, usegmt=True)
    assert sm.call("GET", f"/consumers/{sm.uuid}/accessible_content",
                   headers={"If-Modified-Since": since})[0] == 304

    # Attach is refused with Candlepin's messages; nothing attached by the client.
    status, refused = sm.call("POST", f"/consumers/{sm.uuid}/entitlements")
    assert status == 400 and "because of the content access mode setting" in refused["displayMessage"]
    pool = subs.create_subscription(org, "RHEL-4G", 1).pools.get(type="NORMAL")
    status, refused = sm.call("POST", f"/consumers/{sm.uuid}/entitlements?pool={pool.uuid}")
    assert status == 400 and "Simple Content Access (SCA) is enabled" in refused["displayMessage"]

    # An older client (rhsm 1.19.2: no subscription-manager version, RHEL 9 facts): entitlement.
    old = register(name="rhel9", facts=facts(**{"distribution.version": "9.4"}))
    assert old["owner"]["contentAccessMode"] == "entitlement"
    conn = as_consumer(tmp_path, old, "old")
    assert conn.getOwner(old["uuid"])["contentAccessMode"] == "entitlement"
    assert conn.getCompliance(old["uuid"])["status"] == "invalid"
    assert conn.getCertificateSerials(old["uuid"]) == []
    admin = Client130(server, tmp_path)  # Basic: an org admin asking for it
    assert admin.call("GET", f"/consumers/{old['uuid']}/accessible_content", basic=True)[0] == 404
    assert sm.call("GET", f"/consumers/{old['uuid']}/accessible_content")[0] == 403
    workers.wait_idle()

    # unregister (1.30 sends DELETE with its certificate).
    assert sm.call("DELETE", f"/consumers/{sm.uuid}")[0] == 204
    assert not ContentAccessCertificate.objects.filter(serial=serial).exists()


def test_130_guest_is_covered_through_its_host_without_certificates(server, org, tmp_path):
    _per_client(org)
    subs.create_subscription(org, "VDC", 1)  # one unit: a second host cannot be covered
    guest_uuid = "4c4c4544-0011-0022-0033-000000000140"
    esx1, _ = mapping.report_hypervisor(org, "esx-a", "esx-a", guests=[{"guestId": guest_uuid}])
    sm = Client130(server, tmp_path)
    sm.register("vm-rhel10", {"virt.is_guest": "true", "virt.uuid": guest_uuid})
    workers.wait_idle()  # sam resolves it by itself: the client never attaches

    guest = System.objects.get(uuid=sm.uuid)
    (ent,) = Entitlement.objects.filter(system=guest).select_related("pool")
    assert ent.pool.type == Pool.Type.ENTITLEMENT_DERIVED and ent.pool.requires_host_id == esx1.id
    assert Pool.objects.get(pk=ent.pool_id).consumed == 1  # a unit of the host's derived pool
    assert not EntitlementCertificate.objects.filter(system=guest).exists()
    status, serials = sm.call("GET", f"/consumers/{sm.uuid}/certificates/serials")
    assert [s["serial"] for s in serials] == [guest.content_access_cert.serial]
    assert sm.call("GET", f"/consumers/{sm.uuid}/compliance")[1]["status"] == "disabled"

    # The API and the UI show it covered through its host, in SCA.
    admin = _admin_client()
    detail = admin.get(f"/api/v1/orgs/ACME/systems/{sm.uuid}/").json()
    assert detail["content_access"] == "sca" and detail["client_version"] == "1.30.15-1"
    assert detail["compliance"]["status"] == "valid"
    assert [(e["pool_type"], e["certificate"]) for e in detail["entitlements"]] == [
        ("ENTITLEMENT_DERIVED", None)]
    page = admin.get(f"/o/ACME/systems/{sm.uuid}/").content.decode()
    assert "Simple Content Access" in page and "esx-a" in page
    listing = admin.get("/o/ACME/systems/?coverage=covered").content.decode()
    assert "vm-rhel10" in listing and ">SCA<" in listing
    dashboard = admin.get("/o/ACME/").content.decode()
    assert "1 registered system shown Simple Content Access" in dashboard

    # virt-who moves it to a host without a subscription (no VDC unit free): uncovered at once.
    mapping.report_hypervisor(org, "esx-a", "esx-a", guests=[])
    mapping.report_hypervisor(org, "esx-b", "esx-b", guests=[{"guestId": guest_uuid}])
    workers.wait_idle()
    assert not Entitlement.objects.filter(system=guest).exists()
    detail = admin.get(f"/api/v1/orgs/ACME/systems/{sm.uuid}/").json()
    assert detail["compliance"]["status"] == "invalid" and detail["entitlements"] == []
    assert "vm-rhel10" in admin.get("/o/ACME/systems/?coverage=uncovered").content.decode()
    assert sm.call("GET", f"/consumers/{sm.uuid}/compliance")[1]["status"] == "disabled"


def test_mode_changes_issue_and_revoke_certificates_in_the_worker(server, org, tmp_path):
    subs.create_subscription(org, "RHEL-4G", 2)
    consumer = register(name="box", facts=facts(**{"distribution.version": "9.4"}))
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)
    conn.bind(uuid)
    [ent_serial] = [s["serial"] for s in conn.getCertificateSerials(uuid)]
    system = System.objects.get(uuid=uuid)

    orgs.update_org(org, content_access_mode=Organization.ContentAccess.SCA)
    workers.wait_idle()
    assert not EntitlementCertificate.objects.filter(system=system).exists()
    sca = ContentAccessCertificate.objects.get(system=system)
    assert [s["serial"] for s in conn.getCertificateSerials(uuid)] == [sca.serial]
    assert conn.getOwner(uuid)["contentAccessMode"] == "org_environment"
    assert Entitlement.objects.filter(system=system).count() == 1  # accounting kept

    orgs.update_org(org, content_access_mode=Organization.ContentAccess.ENTITLEMENT)
    workers.wait_idle()
    assert not ContentAccessCertificate.objects.filter(system=system).exists()
    serials = [s["serial"] for s in conn.getCertificateSerials(uuid)]
    assert len(serials) == 1 and serials != [ent_serial]

    # per_client: the same consumer upgraded in place to 1.30 is re-decided at its next call.
    _per_client(org)
    workers.wait_idle()
    sm = Client130(server, tmp_path)
    sm.consumer = consumer
    assert sm.call("GET", f"/consumers/{uuid}")[0] == 200
    workers.wait_idle()
    assert System.objects.get(uuid=uuid).client_requires_sca
    assert sm.call("GET", f"/consumers/{uuid}/owner")[1]["contentAccessMode"] == "org_environment"
    assert [s["serial"] for s in conn.getCertificateSerials(uuid)] == [
        ContentAccessCertificate.objects.get(system=system).serial]
    assert Entitlement.objects.filter(system=system).count() == 1


def test_ui_explains_modes_and_register_commands(server, org):
    admin = _admin_client()
    page = admin.get("/o/ACME/settings/").content.decode()
    assert "Per client" in page and "1.30" in page and "content-access-modes" in page
    register_page = admin.get("/o/ACME/register/").content.decode()
    assert "RHEL 10" in register_page and "rhel10-refused" in register_page
    _per_client(org)
    register_page = admin.get("/o/ACME/register/").content.decode()
    assert "rhel10-refused" not in register_page and "--auto-attach" in register_page


def test_activation_key_registration_and_certificate_renewal(server, org, tmp_path):
    """1.30 with an auto-attaching key: SCA, resolved in the request for accounting, no
    entitlement certificate; the SCA certificate is renewed inside GET /consumers/{uuid}."""
    _per_client(org)
    subs.create_subscription(org, "RHEL-4G", 1)
    activation.create_key(org, "rhel10-key", auto_attach=True)
    sm = Client130(server, tmp_path)
    body = {"type": "system", "name": "keyed", "installedProducts": RHEL10,
            "facts": facts(**{"distribution.version": "10.0"})}
    status, consumer = sm.call("POST", "/consumers?owner=ACME&activation_keys=rhel10-key", body)
    assert status == 200 and consumer["owner"]["contentAccessMode"] == "org_environment"
    sm.consumer = consumer
    system = System.objects.get(uuid=sm.uuid)
    assert [e.pool.product.sku for e in Entitlement.objects.filter(system=system)] == ["RHEL-4G"]
    assert not EntitlementCertificate.objects.filter(system=system).exists()
    old = ContentAccessCertificate.objects.get(system=system)
    assert [s["serial"] for s in sm.call("GET", f"/consumers/{sm.uuid}/certificates/serials")[1]] == [
        old.serial]

    ContentAccessCertificate.objects.filter(pk=old.pk).update(
        not_after=timezone.now() + timedelta(days=3))
    assert sm.call("GET", f"/consumers/{sm.uuid}")[0] == 200
    renewed = ContentAccessCertificate.objects.get(system=system)
    assert renewed.serial != old.serial and renewed.not_after > timezone.now() + timedelta(days=300)
    workers.wait_idle()
