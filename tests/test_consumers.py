"""subscription-manager's registration over the Candlepin wire (issue 10), driven by the real
client library (PyPI ``rhsm==1.19.2``) against ``manage.py serve`` over TLS with a real worker:
Basic auth for registration, the identity certificate (mutual TLS) for everything after it.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from datetime import timedelta
from urllib.parse import quote

import pytest
from cryptography import x509
from django.utils import timezone
from rhsm.certificate import create_from_pem
from rhsm.connection import (
    GoneException,
    RestlibException,
    UEPConnection,
)

from hypervisors import services as mapping
from orgs import activation
from orgs import services as orgs
from orgs.models import ConsumerIdentity, DeletedSystem, System, SystemEvent
from subscriptions.models import SystemCompliance
from tests import rhsm_helper, workers
from tests.scenario import acme

pytestmark = rhsm_helper.WIRE_MARKS

PASSWORD = "admin-pass-1"
COMPLIANCE_KEYS = {"status", "compliantProducts", "partiallyCompliantProducts", "partialStacks",
                   "nonCompliantProducts", "compliantUntil", "reasons"}
RHEL = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server",
         "version": "9.4", "arch": "x86_64"}]




@pytest.fixture
def org(server, settings):
    settings.DATA_DIR = server.data_dir  # the server's CA, for certificates made here
    settings.SECRET_KEY = (server.data_dir / "secret_key").read_text().strip()  # token HMACs
    org = acme()
    orgs.set_member_role(org, "alice", "admin", password=PASSWORD)
    orgs.set_member_role(org, "victor", "viewer", password=PASSWORD)
    other = orgs.create_org("OTHER", "Other Corp")
    orgs.set_member_role(other, "olga", "admin", password=PASSWORD)
    with workers.tasks_to_broker():
        yield org
    workers.wait_idle()


def facts(**extra) -> dict:
    base = {"cpu.cpu_socket(s)": "1", "system.certificate_version": "3.2",
            "distribution.name": "Red Hat Enterprise Linux", "uname.machine": "x86_64"}
    base.update(extra)
    return base


def register(name="host1", owner="ACME", user="alice", password=PASSWORD, **kwargs) -> dict:
    conn = rhsm_helper.connect(user, password)
    return conn.registerConsumer(name=name, facts=kwargs.pop("facts", facts()), owner=owner,
                                 installed_products=kwargs.pop("installed", RHEL), **kwargs)


def as_consumer(tmp_path, consumer: dict, tag: str = "") -> UEPConnection:
    """A connection authenticated by the consumer's identity certificate (as after register)."""
    cert = tmp_path / f"cert{tag}.pem"
    key = tmp_path / f"key{tag}.pem"
    cert.write_text(consumer["idCert"]["cert"])
    key.write_text(consumer["idCert"]["key"])
    return UEPConnection(cert_file=str(cert), key_file=str(key))


def identity_context(server, tmp_path, consumer: dict) -> ssl.SSLContext:
    """An SSL context presenting the consumer's identity certificate, trusting the server."""
    cert, key = tmp_path / "ctx-cert.pem", tmp_path / "ctx-key.pem"
    cert.write_text(consumer["idCert"]["cert"])
    key.write_text(consumer["idCert"]["key"])
    context = server.ssl_context()
    context.load_cert_chain(str(cert), str(key))
    return context


def test_register_get_update_regenerate_unregister(server, org, tmp_path):
    consumer = register(facts=facts(**{"network.fqdn": "host1.example.com"}))
    uuid = consumer["uuid"]
    assert consumer["owner"]["key"] == "ACME"
    assert consumer["owner"]["contentAccessMode"] == "entitlement"
    cert = create_from_pem(consumer["idCert"]["cert"])
    assert cert.subject["CN"] == uuid and cert.subject["O"] == "ACME"
    assert int(consumer["idCert"]["serial"]["serial"]) == cert.serial
    parsed = x509.load_pem_x509_certificate(consumer["idCert"]["cert"].encode())
    assert parsed.public_key().key_size == 2048
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DirectoryName)[-1].rfc4514_string() == "CN=host1"
    system = System.objects.get(uuid=uuid)
    assert system.installed_product_ids == ["479"]
    assert ConsumerIdentity.objects.get(system=system).registered_by == "alice"

    conn = as_consumer(tmp_path, consumer)
    got = conn.getConsumer(uuid)
    assert got["uuid"] == uuid and got["idCert"]["serial"]["serial"] == cert.serial
    assert got["installedProducts"][0]["status"] == "red"
    assert conn.getOwner(uuid)["key"] == "ACME"
    assert conn.getCertificateSerials(uuid) == []
    assert conn.conn.request_get(f"/consumers/{uuid}/content_overrides") == []
    assert conn.conn.request_get(f"/consumers/{uuid}/purpose_compliance")["status"] == "not specified"
    assert conn.conn.request_get(f"/consumers/{uuid}/release") == {"releaseVer": None}

    # Compliance from stored state, with every key the client reads.
    status = conn.getCompliance(uuid)
    assert COMPLIANCE_KEYS <= set(status)
    assert status["status"] == "invalid" and status["nonCompliantProducts"] == ["479"]
    assert status["reasons"][0]["attributes"]["name"] == "Red Hat Enterprise Linux Server"
    assert SystemCompliance.objects.get(system=system).status == "invalid"
    later = conn.getCompliance(uuid, on_date=timezone.now() + timedelta(days=3))
    assert later["status"] == "invalid" and COMPLIANCE_KEYS <= set(later)

    # PUT: each field present replaces that field; absent fields are unchanged.
    conn.updateConsumer(uuid, facts=facts(**{"network.fqdn": "renamed.example.com"}))
    system.refresh_from_db()
    assert system.facts["network.fqdn"] == "renamed.example.com"
    assert system.installed_product_ids == ["479"]
    conn.updateConsumer(uuid, autoheal=False)
    system.refresh_from_db()
    assert not system.autoheal and system.facts["network.fqdn"] == "renamed.example.com"
    conn.updateConsumer(uuid, release="9.4")
    assert conn.conn.request_get(f"/consumers/{uuid}/release") == {"releaseVer": "9.4"}
    # 204 carries no body: the real client reuses its connection (keep-alive) afterwards.
    keepalive = http.client.HTTPSConnection("127.0.0.1", server.port,
                                            context=identity_context(server, tmp_path, consumer))
    keepalive.request("PUT", f"/candlepin/consumers/{uuid}", body=b'{"autoheal": false}',
                      headers={"Content-Type": "application/json"})
    answer = keepalive.getresponse()
    assert answer.status == 204 and answer.read() == b""
    keepalive.request("GET", f"/candlepin/consumers/{uuid}/release")
    answer = keepalive.getresponse()
    assert answer.status == 200 and json.loads(answer.read()) == {"releaseVer": "9.4"}
    keepalive.close()

    # identity --regenerate: a new serial; the old certificate is refused from then on.
    new = conn.regenIdCertificate(uuid)
    assert new["idCert"]["serial"]["serial"] != cert.serial
    with pytest.raises(RestlibException) as refused:
        conn.getConsumer(uuid)
    assert refused.value.code == 401
    conn = as_consumer(tmp_path, new, "-new")
    assert conn.getConsumer(uuid)["uuid"] == uuid

    # unregister: 204, then 410 with deletedId for that uuid.
    conn.unregisterConsumer(uuid)
    assert not System.objects.filter(uuid=uuid).exists()
    assert DeletedSystem.objects.filter(uuid=uuid).exists()
    with pytest.raises(GoneException) as gone:
        conn.getConsumer(uuid)
    assert gone.value.code == 410 and gone.value.deleted_id == uuid
    with pytest.raises(GoneException):
        rhsm_helper.connect("alice", PASSWORD).getConsumer(uuid)


def test_who_may_register(org):
    with pytest.raises(RestlibException) as wrong:
        register(password="wrong")
    assert wrong.value.code == 401 and str(wrong.value) == "Invalid username or password."
    with pytest.raises(RestlibException) as viewer:
        register(user="victor")
    assert viewer.value.code == 403
    with pytest.raises(RestlibException) as unknown:
        register(owner="NOPE")
    with pytest.raises(RestlibException) as hidden:
        register(owner="OTHER")  # exists, but alice cannot see it
    assert unknown.value.code == hidden.value.code == 400
    assert str(unknown.value) == "Organization NOPE does not exist."
    assert str(hidden.value) == "Organization OTHER does not exist."
    with pytest.raises(RestlibException) as bad_type:
        register(facts=facts(), type="candlepin")
    assert bad_type.value.code == 400
    # An API token with the admin role works as the password.
    _, token = orgs.create_token(org, "ci", "admin")
    assert register(name="by-token", user="ci", password=token)["uuid"]
    assert not System.objects.filter(name="host1").exists()


def test_consumer_touches_only_itself(org, tmp_path):
    one = register(name="one")
    two = register(name="two")
    conn = as_consumer(tmp_path, one)
    with pytest.raises(RestlibException) as caught:
        conn.getConsumer(two["uuid"])
    assert caught.value.code == 403
    # Another org's admin does not see the consumer at all.
    with pytest.raises(RestlibException) as caught:
        rhsm_helper.connect("olga", PASSWORD).getConsumer(one["uuid"])
    assert caught.value.code == 404


def test_guest_gets_its_host_at_once(org):
    host, _ = mapping.report_hypervisor(org, "esx-1", "esx-1",
                                        guests=[{"guestId": "4C4C4544-0001-0002-0003-000000000001"}])
    consumer = register(name="vm1", facts=facts(**{
        "virt.is_guest": "true", "virt.uuid": "4c4c4544-0001-0002-0003-000000000001"}))
    guest = System.objects.get(uuid=consumer["uuid"])
    assert guest.is_guest and guest.current_host_id == host.id


def test_host_takes_over_virt_who_hypervisor_and_clones_are_flagged(org):
    dmi = "11111111-2222-3333-4444-555555555555"
    reported, _ = mapping.report_hypervisor(org, dmi, "esx-2", guests=[])
    consumer = register(name="esx-2.example.com", facts=facts(**{"dmi.system.uuid": dmi.upper()}))
    assert consumer["uuid"] == str(reported.uuid)  # the same row, never a second one
    assert System.objects.filter(org=org).count() == 1
    clone = register(name="clone", facts=facts(**{"dmi.system.uuid": dmi}))
    assert clone["uuid"] != consumer["uuid"]
    assert SystemEvent.objects.filter(kind="possible_clone").count() == 2


def test_activation_keys(org):
    key = activation.create_key(org, "rhel-key", auto_attach=True, service_level="Premium",
                                release_ver="9.4")
    activation.create_key(orgs.get_org("OTHER"), "their-key")
    conn = rhsm_helper.connect()
    consumer = conn.registerConsumer(name="keyed", facts=facts(), owner="ACME",
                                     keys=[key.name], installed_products=RHEL)
    assert consumer["serviceLevel"] == "Premium"
    assert consumer["releaseVer"] == {"releaseVer": "9.4"}
    identity = ConsumerIdentity.objects.get(system__uuid=consumer["uuid"])
    assert identity.registered_via == "activation-key"
    with pytest.raises(RestlibException) as unknown:
        conn.registerConsumer(name="x", facts=facts(), owner="ACME", keys=["nope"])
    with pytest.raises(RestlibException) as foreign:
        conn.registerConsumer(name="x", facts=facts(), owner="ACME", keys=["their-key"])
    assert unknown.value.code == foreign.value.code == 400
    assert str(unknown.value) == str(foreign.value) == \
        "None of the activation keys specified exist for this org."
    with pytest.raises(RestlibException) as no_org:
        conn.registerConsumer(name="x", facts=facts(), owner="NOPE", keys=["rhel-key"])
    assert str(no_org.value) == "Organization NOPE does not exist."


def test_renewed_identity_keeps_previous_until_new_is_used(org, tmp_path):
    consumer = register()
    uuid = consumer["uuid"]
    old = as_consumer(tmp_path, consumer)
    ConsumerIdentity.objects.filter(system__uuid=uuid).update(
        not_after=timezone.now() + timedelta(days=30))
    renewed = old.getConsumer(uuid)  # renewal happens inside GET /consumers/{uuid}
    assert renewed["idCert"]["serial"]["serial"] != consumer["idCert"]["serial"]["serial"]
    assert old.getCompliance(uuid)["status"] == "invalid"  # the previous one still works
    new = as_consumer(tmp_path, renewed, "-renewed")
    assert new.getConsumer(uuid)["uuid"] == uuid  # first use of the new certificate ...
    with pytest.raises(RestlibException) as refused:
        old.getConsumer(uuid)  # ... retires the previous one
    assert refused.value.code == 401


def _get(url: str, headers: dict, context=None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_client_certificate_through_a_trusted_proxy_header(server, org, tmp_path):
    from tests.test_pki import client_pair, foreign_ca

    consumer = register()
    uuid = consumer["uuid"]
    header = {"X-SSL-Client-Cert": quote(consumer["idCert"]["cert"])}
    pki_dir = server.data_dir / "pki"
    ca = {"SAM_CA_CERT": str(pki_dir / "ca.crt"), "SAM_CA_KEY": str(pki_dir / "ca.key")}
    behind = rhsm_helper.start_server(tmp_path / "proxy", args=("--no-tls",),
                                      env={"SAM_FORWARDED_ALLOW_IPS": "127.0.0.1", **ca})
    untrusting = rhsm_helper.start_server(tmp_path / "direct", args=("--no-tls",), env=ca)
    try:
        status, body = _get(f"{behind.url}/candlepin/consumers/{uuid}/compliance", header)
        assert status == 200 and body["status"] == "invalid"
        # A certificate from another CA in the header: 401.
        foreign_cert, _ = client_pair(tmp_path, "ACME", uuid, signer=foreign_ca())
        status, body = _get(f"{behind.url}/candlepin/consumers/{uuid}",
                            {"X-SSL-Client-Cert": quote(foreign_cert.read_text())})
        assert status == 401 and body["displayMessage"]
        # From a peer that is not a trusted proxy the header is ignored: no credentials, 401.
        status, _ = _get(f"{untrusting.url}/candlepin/consumers/{uuid}/compliance", header)
        assert status == 401
    finally:
        rhsm_helper.stop_server(behind)
        rhsm_helper.stop_server(untrusting)
    # sam's own TLS server trusts no proxy either.
    status, _ = _get(f"{server.url}/candlepin/consumers/{uuid}/compliance", header,
                     server.ssl_context())
    assert status == 401


def test_activation_key_endpoints_and_pools(org):
    from subscriptions import services as subs
    from subscriptions.models import Entitlement, Pool

    subs.create_subscription(org, "RHEL-4G", 5)
    pool = Pool.objects.get(org=org, product__sku="RHEL-4G", requires_host__isnull=True,
                            type="NORMAL")
    admin = rhsm_helper.connect("alice", PASSWORD).conn
    key = admin.request_post("/owners/ACME/activation_keys",
                             {"name": "k1", "autoAttach": False, "serviceLevel": "Premium"})
    assert key["name"] == "k1" and key["pools"] == []
    with pytest.raises(RestlibException) as duplicate:
        admin.request_post("/owners/ACME/activation_keys", {"name": "k1"})
    assert duplicate.value.code == 400
    key = admin.request_post(f"/activation_keys/{key['id']}/pool/{pool.uuid}?quantity=1")
    assert key["pools"] == [{"poolId": str(pool.uuid), "quantity": 1}]
    key = admin.request_put(f"/activation_keys/{key['id']}", {"releaseVer": {"releaseVer": "9.2"}})
    assert key["releaseVer"] == {"releaseVer": "9.2"} and key["serviceLevel"] == "Premium"
    viewer = rhsm_helper.connect("victor", PASSWORD).conn
    assert [k["name"] for k in viewer.request_get("/owners/ACME/activation_keys")] == ["k1"]
    with pytest.raises(RestlibException) as forbidden:
        viewer.request_post("/owners/ACME/activation_keys", {"name": "k2"})
    assert forbidden.value.code == 403
    with pytest.raises(RestlibException) as hidden:
        rhsm_helper.connect("olga", PASSWORD).conn.request_get(f"/activation_keys/{key['id']}")
    assert hidden.value.code == 404

    # Registering with the key attaches its pool in the same request.
    consumer = rhsm_helper.connect().registerConsumer(name="keyed", facts=facts(), owner="ACME",
                                                     keys=["k1"], installed_products=RHEL)
    assert Entitlement.objects.filter(system__uuid=consumer["uuid"], pool=pool).exists()
    assert consumer["releaseVer"] == {"releaseVer": "9.2"}
    admin.request_delete(f"/activation_keys/{key['id']}")
    assert admin.request_get("/owners/ACME/activation_keys") == []
