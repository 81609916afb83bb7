"""subscription-manager part 2 (issue 11): pools for a consumer, attach and remove over the
Candlepin wire, driven by the real client library (PyPI ``rhsm==1.19.2``) against
``manage.py serve`` over TLS with a real worker (fixtures of tests/test_consumers.py).
"""

from __future__ import annotations

import http.client
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rhsm.certificate import create_from_pem
from rhsm.certificate2 import EntitlementCertificate as V3Certificate
from rhsm.connection import RestlibException

from hypervisors import services as mapping
from orgs.models import System
from subscriptions import compliance
from subscriptions import services as subs
from subscriptions.models import Entitlement, EntitlementEvent, Pool, SystemCompliance
from tests import rhsm_helper, workers
from tests import test_consumers as base
from tests.test_consumers import PASSWORD, as_consumer, facts, register

org = base.org  # org ACME (tests/test_consumers.py)



pytestmark = rhsm_helper.WIRE_MARKS

POOL_KEYS = {"id", "productId", "productName", "providedProducts", "quantity", "consumed",
             "startDate", "endDate", "contractNumber", "attributes", "productAttributes",
             "calculatedAttributes"}


def _pool(org, sku: str, type_: str = "NORMAL") -> Pool:
    return Pool.objects.get(org=org, product__sku=sku, type=type_, requires_host__isnull=True)


def _refused(call) -> RestlibException:
    with pytest.raises(RestlibException) as caught:
        call()
    return caught.value


def test_available_pools_and_attach_by_pool(server, org, tmp_path):
    subs.create_subscription(org, "RHEL-4G", 1, contract_number="C-42")
    normal = _pool(org, "RHEL-4G")
    unmapped = _pool(org, "RHEL-4G", "UNMAPPED_GUEST")
    one = register(name="phys-1")
    uuid = one["uuid"]
    conn = as_consumer(tmp_path, one)

    # list --available: what the pre-entitlement checks let this physical system take.
    pools = conn.getPoolsList(consumer=uuid, owner="ACME")
    assert [p["id"] for p in pools] == [str(normal.uuid)]
    pool = pools[0]
    assert POOL_KEYS <= set(pool)
    assert pool["productName"] == "RHEL with 4 guests" and pool["contractNumber"] == "C-42"
    assert pool["providedProducts"] == [{"productId": "479",
                                         "productName": "Red Hat Enterprise Linux Server"}]
    assert pool["calculatedAttributes"]["compliance_type"] == "Standard"
    assert pool["calculatedAttributes"]["suggested_quantity"] == "1"
    assert {"name": "virt_limit", "value": "4"} in pool["productAttributes"]
    everything = conn.getPoolsList(consumer=uuid, owner="ACME", listAll=True)
    assert {p["id"] for p in everything} == {str(normal.uuid), str(unmapped.uuid)}
    assert conn.getPoolsList(consumer=uuid, owner="ACME", listAll=True, filter_string="c-4*") \
        and conn.getPoolsList(consumer=uuid, owner="ACME", filter_string="nothing-like-it") == []
    # A consumer reads its own org's pools only, and only for itself.
    assert _refused(lambda: conn.getPoolsList(consumer=uuid, owner="OTHER")).code == 403
    other = register(name="phys-2")
    assert _refused(lambda: conn.getPoolsList(consumer=other["uuid"], owner="ACME")).code == 403
    # An org member (Basic) reads them for any system of the org.
    admin = rhsm_helper.connect("alice", PASSWORD)
    assert [p["id"] for p in admin.getPoolsList(consumer=other["uuid"], owner="ACME")] == \
        [str(normal.uuid)]

    # attach --pool: the answer carries pool.productName; compliance follows in the request.
    attached = conn.bindByEntitlementPool(uuid, str(normal.uuid))
    assert attached[0]["pool"]["productName"] == "RHEL with 4 guests"
    assert attached[0]["pool"]["id"] == str(normal.uuid) and attached[0]["quantity"] == 1
    status = conn.getCompliance(uuid)
    assert status["status"] == "valid" and list(status["compliantProducts"]) == ["479"]
    assert status["compliantUntil"] is not None
    listed = conn.getEntitlementList(uuid)
    assert [e["pool"]["id"] for e in listed] == [str(normal.uuid)]
    assert listed[0]["pool"]["calculatedAttributes"]["compliance_type"] == "Standard"
    assert listed[0]["id"] == attached[0]["id"]

    # Refusals: Candlepin's status, a message the client prints, the engine's reason key.
    again = _refused(lambda: conn.bindByEntitlementPool(uuid, str(normal.uuid)))
    assert again.code == 403 and str(normal.uuid) in str(again) and "already" in str(again)
    two = as_consumer(tmp_path, other, "-2")
    assert two.getPoolsList(consumer=other["uuid"], owner="ACME") == []  # no unit left
    exhausted = _refused(lambda: two.bindByEntitlementPool(other["uuid"], str(normal.uuid)))
    assert exhausted.code == 403 and "No subscriptions are available" in str(exhausted)
    virt = _refused(lambda: two.bindByEntitlementPool(other["uuid"], str(unmapped.uuid)))
    assert virt.code == 403 and "virtual guests" in str(virt)
    raw = http.client.HTTPSConnection("127.0.0.1", server.port,
                                      context=base.identity_context(server, tmp_path, other))
    raw.request("POST", f"/candlepin/consumers/{other['uuid']}/entitlements?pool={unmapped.uuid}")
    reply = raw.getresponse()
    assert reply.status == 403 and json.loads(reply.read())["reason"] == "virt_only"
    raw.close()
    bad = _refused(lambda: two.bindByEntitlementPool(other["uuid"], str(normal.uuid), quantity="x"))
    assert bad.code == 400
    assert _refused(lambda: two.bindByEntitlementPool(other["uuid"], "no-such-pool")).code == 404
    assert not Entitlement.objects.filter(system__uuid=other["uuid"]).exists()

    # remove --pool: the entitlement goes, compliance follows, the unit is free again.
    conn.unbindByPoolId(uuid, str(normal.uuid))
    assert conn.getEntitlementList(uuid) == []
    assert conn.getCompliance(uuid)["status"] == "invalid"
    assert _refused(lambda: conn.unbindByPoolId(uuid, str(normal.uuid))).code == 404
    assert [p["id"] for p in two.getPoolsList(consumer=other["uuid"], owner="ACME")] == \
        [str(normal.uuid)]


def test_auto_attach_remove_all_and_entitle_date(org, tmp_path):
    subs.create_subscription(org, "RHEL-4G", 2)
    consumer = register(name="phys-auto")
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)

    attached = conn.bind(uuid)  # attach --auto: no query, no body
    assert [e["pool"]["productId"] for e in attached] == ["RHEL-4G"]
    assert conn.getCompliance(uuid)["status"] == "valid"
    assert conn.bind(uuid) == []  # nothing left to do: 200 []

    # remove --all: deletedRecords; sam's own triggers do not re-attach (client intent).
    assert conn.unbindAll(uuid) == {"deletedRecords": 1}
    assert SystemCompliance.objects.get(system__uuid=uuid).status == "invalid"
    workers.wait_idle()
    assert not Entitlement.objects.filter(system__uuid=uuid).exists()
    assert conn.getCompliance(uuid)["status"] == "invalid"

    # rhsmcertd --autoheal: entitle_date (isoformat with microseconds, quote_plus'd); the
    # client's own request attaches even with its autoheal switched off.
    conn.updateConsumer(uuid, autoheal=False)
    attached = conn.bind(uuid, entitle_date=timezone.now() + timedelta(days=1))
    assert len(attached) == 1 and conn.getCompliance(uuid)["status"] == "valid"
    event = EntitlementEvent.objects.filter(system_uuid=uuid, action="attached").first()
    assert event.trigger == "consumer_auto_attach"
    bad = _refused(lambda: conn.conn.request_post(
        f"/consumers/{uuid}/entitlements?entitle_date=tomorrow"))
    assert bad.code == 400

    # DELETE /consumers/{uuid}/entitlements/{id}
    ent_id = attached[0]["id"]
    conn.conn.request_delete(f"/consumers/{uuid}/entitlements/{ent_id}")
    assert conn.getEntitlementList(uuid) == []
    assert _refused(lambda: conn.conn.request_delete(
        f"/consumers/{uuid}/entitlements/{ent_id}")).code == 404

    # An org without auto-attach refuses the request as Candlepin does.
    org.autobind_enabled = False
    org.save(update_fields=["autobind_enabled"])
    refused = _refused(lambda: conn.bind(uuid))
    assert refused.code == 400 and "auto-attach" in str(refused)


def test_guest_auto_attaches_its_hosts_derived_pool(org, tmp_path):
    subs.create_subscription(org, "VDC", 1)
    guest_uuid = "4c4c4544-0011-0022-0033-000000000044"
    host, _ = mapping.report_hypervisor(org, "esx-9", "esx-9", guests=[{"guestId": guest_uuid}])
    consumer = register(name="vm-9", facts=facts(**{"virt.is_guest": "true",
                                                     "virt.uuid": guest_uuid}))
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)
    # Host not entitled yet: no derived pool; the temporary pool is not for a mapped guest.
    assert [p["type"] for p in conn.getPoolsList(consumer=uuid, owner="ACME")] == ["NORMAL"]

    attached = conn.bind(uuid)  # host first: VDC on the host, then the guest from its pool
    assert len(attached) == 1
    pool = Pool.objects.get(uuid=attached[0]["pool"]["id"])
    assert pool.type == "ENTITLEMENT_DERIVED" and pool.requires_host_id == host.id
    assert attached[0]["pool"]["productId"] == "RHEL-G"
    assert Entitlement.objects.filter(system=host, pool__product__sku="VDC").exists()
    assert conn.getCompliance(uuid)["status"] == "valid"
    # The host's derived pool is what the guest sees (listall: and never another host's).
    other, _ = mapping.report_hypervisor(org, "esx-10", "esx-10", guests=[])
    second = subs.create_subscription(org, "VDC", 1)
    subs.attach(org, other.uuid, second.pools.get(type="NORMAL").uuid)
    assert Pool.objects.filter(requires_host=other).exists()
    listed = conn.getPoolsList(consumer=uuid, owner="ACME", listAll=True)
    derived = [p for p in listed if p["type"] == "ENTITLEMENT_DERIVED"]
    assert [p["id"] for p in derived] == [str(pool.uuid)]
    assert System.objects.get(uuid=uuid).current_host_id == host.id


def _serials(conn, uuid) -> list[int]:
    return [s["serial"] for s in conn.getCertificateSerials(uuid)]


def test_entitlement_certificates_follow_the_entitlements(org, tmp_path):
    subscription = subs.create_subscription(org, "RHEL-4G", 3, contract_number="C-7")
    normal = _pool(org, "RHEL-4G")
    consumer = register(name="phys-cert")
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)
    assert _serials(conn, uuid) == []

    attached = conn.bindByEntitlementPool(uuid, str(normal.uuid))
    ent_id = attached[0]["id"]
    [serial] = _serials(conn, uuid)
    assert 0 < serial < 2**63
    [bundle] = conn.getCertificates(uuid, serials=[str(serial)])
    assert bundle["key"] == consumer["idCert"]["key"]  # the consumer's own key pair
    assert attached[0]["certificates"][0]["serial"]["serial"] == serial
    cert = create_from_pem(bundle["cert"])
    assert isinstance(cert, V3Certificate) and cert.version.major == 3
    assert cert.serial == serial and cert.subject["CN"] == ent_id
    assert cert.pool.id == str(normal.uuid)
    assert cert.order.sku == "RHEL-4G" and cert.order.name == "RHEL with 4 guests"
    assert cert.order.contract == "C-7" and int(cert.order.quantity_used) == 1
    assert [(p.id, p.name) for p in cert.products] == [("479", "Red Hat Enterprise Linux Server")]
    # list --consumed asks without key and cert: the serial is still there.
    listed = conn.getEntitlementList(uuid)
    assert listed[0]["certificates"][0]["serial"]["serial"] == serial
    assert "key" not in listed[0]["certificates"][0] and "cert" not in listed[0]["certificates"][0]
    assert conn.getCertificates(uuid, serials=["12345"]) == []

    # The entitlement's dates change (its subscription ends earlier): a new serial.
    subs.update_subscription(org, subscription.uuid, end=subscription.end - timedelta(days=30))
    [renewed] = _serials(conn, uuid)
    assert renewed != serial
    fresh = create_from_pem(conn.getCertificates(uuid, serials=[str(renewed)])[0]["cert"])
    assert fresh.end.date() == (subscription.end - timedelta(days=30)).date()
    # refresh --force: every certificate re-issued.
    conn.regenEntitlementCertificates(uuid, lazy_regen=True)
    [regenerated] = _serials(conn, uuid)
    assert regenerated not in (serial, renewed)

    # remove --serial: the entitlement goes with its certificate.
    conn.unbindBySerial(uuid, regenerated)
    assert _serials(conn, uuid) == [] and conn.getEntitlementList(uuid) == []
    assert _refused(lambda: conn.unbindBySerial(uuid, regenerated)).code == 404
    # Auto-attach issues them too; remove --all takes them away.
    conn.bind(uuid)
    assert len(_serials(conn, uuid)) == 1
    conn.unbindAll(uuid)
    assert _serials(conn, uuid) == []


def test_guest_certificate_carries_the_derived_product_and_goes_on_migration(org, tmp_path):
    subs.create_subscription(org, "VDC", 1)
    guest_uuid = "4c4c4544-0011-0022-0033-000000000055"
    mapping.report_hypervisor(org, "esx-h1", "esx-h1", guests=[{"guestId": guest_uuid}])
    consumer = register(name="vm-m", facts=facts(**{"virt.is_guest": "true",
                                                     "virt.uuid": guest_uuid}))
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)
    conn.bind(uuid)
    [serial] = _serials(conn, uuid)
    cert = create_from_pem(conn.getCertificates(uuid)[0]["cert"])
    assert cert.order.sku == "RHEL-G" and [p.id for p in cert.products] == ["479"]

    # virt-who moves the guest to a host without a subscription while no VDC unit is free:
    # the worker revokes the derived entitlement and its certificate; compliance turns invalid.
    mapping.report_hypervisor(org, "esx-h1", "esx-h1", guests=[])
    mapping.report_hypervisor(org, "esx-h2", "esx-h2", guests=[{"guestId": guest_uuid}])
    workers.wait_idle()
    assert _serials(conn, uuid) == []
    assert conn.getCompliance(uuid)["status"] == "invalid"


def test_bad_queries_answer_400_and_change_nothing(org, tmp_path):
    subs.create_subscription(org, "RHEL-4G", 1)
    pool = _pool(org, "RHEL-4G")
    consumer = register(name="phys-bad")
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer).conn
    for path in (f"/consumers/{uuid}/entitlements?pool={pool.uuid}&quantity=-1",
                 f"/consumers/{uuid}/entitlements?pool={pool.uuid}&quantity=99999999999999999999",
                 f"/consumers/{uuid}/entitlements?entitle_date=99999-01-01T00:00:00",
                 f"/consumers/{uuid}/entitlements?entitle_date=%00"):
        assert _refused(lambda p=path: conn.request_post(p)).code == 400, path
    for path in (f"/consumers/{uuid}/certificates?serials=abc",
                 f"/consumers/{uuid}/certificates?serials=99999999999999999999",
                 f"/owners/ACME/pools?consumer={uuid}&activeon=yesterday",
                 f"/owners/ACME/pools?consumer={uuid}&listall=maybe"):
        assert _refused(lambda p=path: conn.request_get(p)).code == 400, path
    assert _refused(lambda: conn.request_delete(f"/consumers/{uuid}/certificates/abc")).code == 404
    assert _refused(lambda: conn.request_delete(f"/consumers/{uuid}/entitlements/pool/x")).code == 404
    assert not Entitlement.objects.exists() and Pool.objects.get(pk=pool.pk).consumed == 0


def test_compliant_until_is_when_the_status_stops_being_valid(org, tmp_path):
    """``compliantUntil`` (rhsmcertd heals for tomorrow when it is earlier): the end of the
    entitlement the valid status depends on -- not of a redundant or an unrelated one -- and it
    follows the entitlements as they change."""
    now = timezone.now()
    soon = subs.create_subscription(org, "RHEL-4G", 1, end=now + timedelta(days=30))
    later = subs.create_subscription(org, "RHEL-4G", 1, end=now + timedelta(days=60))
    unrelated = subs.create_subscription(org, "VDC", 1, end=now + timedelta(days=10))
    consumer = register(name="phys-until")
    uuid = consumer["uuid"]
    conn = as_consumer(tmp_path, consumer)

    def until():
        status = conn.getCompliance(uuid)
        return status["status"], status["compliantUntil"]

    def pool(subscription):
        return str(subscription.pools.get(type="NORMAL").uuid)

    assert until() == ("invalid", None)
    conn.bindByEntitlementPool(uuid, pool(soon))
    assert until() == ("valid", compliance._iso(soon.end))
    # Candlepin's date range per covered product (``list --installed`` Starts/Ends).
    assert conn.getCompliance(uuid)["productComplianceDateRanges"]["479"]["endDate"] == \
        compliance._iso(soon.end)
    installed = {p["productId"]: p for p in conn.getConsumer(uuid)["installedProducts"]}
    assert (installed["479"]["status"], installed["479"]["endDate"]) == \
        ("green", compliance._iso(soon.end))
    assert installed["479"]["startDate"] is not None
    conn.bindByEntitlementPool(uuid, pool(unrelated))  # provides nothing installed
    assert until() == ("valid", compliance._iso(soon.end))
    conn.bindByEntitlementPool(uuid, pool(later))  # covers 479 after the first one ends
    assert until() == ("valid", compliance._iso(later.end))
    # The later subscription is cut short: its entitlement's end, and so compliantUntil, moves.
    cut = now + timedelta(days=20)
    subs.update_subscription(org, later.uuid, end=cut)
    assert until() == ("valid", compliance._iso(soon.end))
    conn.unbindByPoolId(uuid, pool(soon))
    assert until() == ("valid", compliance._iso(cut))
    # The same on a date asked for, computed on demand; and nothing once not valid.
    status = conn.getCompliance(uuid, on_date=now + timedelta(days=5))
    assert status["compliantUntil"] == compliance._iso(cut)
    assert conn.getCompliance(uuid, on_date=now + timedelta(days=25))["compliantUntil"] is None
    conn.unbindAll(uuid)
    assert until() == ("invalid", None)


def test_regenerate_ends_the_connection_so_the_next_request_uses_the_new_certificate(
        server, org, tmp_path):
    """rhsmcertd-worker 1.29.54 regenerates its identity when its cryptographic capabilities
    changed and goes on with the cert check on the same keep-alive connection: the answer closes
    that connection, so the client's next request presents the new certificate, not the revoked
    one (which answered 401 and failed the check)."""
    consumer = register(name="phys-keepalive")
    uuid = consumer["uuid"]
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=base.identity_context(server, tmp_path, consumer))
    conn.request("GET", f"/candlepin/consumers/{uuid}/certificates/serials")
    first = conn.getresponse()
    assert first.status == 200 and first.getheader("Connection") != "close"
    first.read()
    conn.request("POST", f"/candlepin/consumers/{uuid}")  # identity --regenerate
    answer = conn.getresponse()
    regenerated = json.loads(answer.read())
    assert answer.status == 200 and answer.getheader("Connection") == "close"
    conn.close()
    new = {"idCert": regenerated["idCert"]}
    again = http.client.HTTPSConnection("127.0.0.1", server.port,
                                        context=base.identity_context(server, tmp_path, new))
    again.request("GET", f"/candlepin/consumers/{uuid}/certificates/serials")
    assert again.getresponse().status == 200
    again.close()
    old = http.client.HTTPSConnection("127.0.0.1", server.port,
                                      context=base.identity_context(server, tmp_path, consumer))
    old.request("GET", f"/candlepin/consumers/{uuid}/certificates/serials")
    assert old.getresponse().status == 401  # the old certificate stays revoked
    old.close()
