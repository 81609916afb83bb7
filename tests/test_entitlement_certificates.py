"""Entitlement certificates kept in step with entitlements, through the services only (fast,
and on whichever database the suite runs: SQLite too). The wire is in tests/test_attach.py."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rhsm.certificate import create_from_pem

from hypervisors import services as mapping
from orgs import consumers
from orgs import services as orgs
from subscriptions import services as subs
from subscriptions.models import EntitlementCertificate, Pool
from tests.scenario import acme

pytestmark = [pytest.mark.django_db,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:rhsm.certificate2")]


@pytest.fixture
def org(settings, tmp_path):
    settings.DATA_DIR = tmp_path  # a CA of this test's own
    return acme()


def test_issued_with_the_entitlement_and_gone_with_it(org):
    subs.create_subscription(org, "RHEL-4G", 2)
    pool = Pool.objects.get(org=org, product__sku="RHEL-4G", type="NORMAL")
    system = mapping.register_consumer(org, "box", {}, [{"productId": "479"}])
    ent = subs.attach(org, system.uuid, pool.uuid)
    cert = EntitlementCertificate.objects.get(entitlement=ent)
    parsed = create_from_pem(cert.cert_pem)
    assert parsed.serial == cert.serial and parsed.pool.id == str(pool.uuid)
    assert parsed.subject["CN"] == str(ent.uuid) and parsed.version.major == 3
    # For the consumer's own key pair: the identity's public key.
    own = serialization.load_pem_private_key(consumers.key_pem(system.identity).encode(), None)
    issued = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    assert issued.public_key().public_numbers() == own.public_key().public_numbers()
    subs.remove_own_entitlements(system)
    assert not EntitlementCertificate.objects.exists()


def test_systems_without_an_identity_get_none(org):
    subs.create_subscription(org, "VDC", 1)
    host, _ = mapping.report_hypervisor(org, "esx-1", "esx-1", guests=[])
    subs.attach(org, host.uuid, Pool.objects.get(org=org, product__sku="VDC", type="NORMAL").uuid)
    assert not EntitlementCertificate.objects.exists()


def test_api_and_system_page_show_the_serial(org, client):
    from tests.api_actors import make_actors

    subs.create_subscription(org, "RHEL-4G", 2)
    pool = Pool.objects.get(org=org, product__sku="RHEL-4G", type="NORMAL")
    system = mapping.register_consumer(org, "box", {}, [{"productId": "479"}])
    ent = subs.attach(org, system.uuid, pool.uuid)
    cert = EntitlementCertificate.objects.get(entitlement=ent)
    actors = make_actors(org)
    data = actors.clients["viewer"].get(f"/api/v1/orgs/ACME/systems/{system.uuid}/").json()
    (row,) = data["entitlements"]
    assert row["certificate"]["serial"] == cert.serial and row["certificate"]["end"]
    (explanation,) = data["explanation"]  # the explanation names the certificate
    assert {"kind": "certificate", "label": f"serial {cert.serial}", "id": str(cert.serial)} \
        in explanation["chain"]
    client.force_login(orgs.set_member_role(org, "ui-viewer", "viewer"))
    page = client.get(f"/o/ACME/systems/{system.uuid}/").content.decode()
    assert f"serial {cert.serial}" in page


def test_serials_and_compliance_cost_a_constant_number_of_statements(org, client):
    """rhsmcertd's periodic check (consumer-api.md section 4): the same statements whatever
    the number of entitlements (the identity certificate as sam's TLS layer hands it over)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    system = mapping.register_consumer(org, "box", {}, [{"productId": "479"}])
    meta = {"sam.client_cert": x509.load_pem_x509_certificate(
        system.identity.cert_pem.encode()).public_bytes(serialization.Encoding.DER)}

    def statements() -> int:
        total = 0
        for path in ("certificates/serials", "compliance"):
            with CaptureQueriesContext(connection) as queries:
                response = client.get(f"/candlepin/consumers/{system.uuid}/{path}", **meta)
            assert response.status_code == 200
            total += len(queries)
        return total

    for sku in ("RHEL-4G", "VDC"):
        subs.create_subscription(org, sku, 1)
    subs.attach(org, system.uuid, Pool.objects.get(org=org, product__sku="RHEL-4G", type="NORMAL").uuid)
    one = statements()
    subs.attach(org, system.uuid, Pool.objects.get(org=org, product__sku="VDC", type="NORMAL").uuid)
    serials = client.get(f"/candlepin/consumers/{system.uuid}/certificates/serials", **meta).json()
    assert len(serials) == 2
    assert statements() == one, one
