"""Registration semantics in the domain (issue 10 item 4), in-process and fast: what a
re-sent or changed fact triggers, stored compliance kept current where entitlements change,
unregistering a host, and the constant statement count of the consumer's periodic reads."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hypervisors import services as lifecycle
from orgs.models import System
from subscriptions import services as subs
from subscriptions.models import Entitlement, SystemCompliance
from tests.scenario import acme, report, subscribe

pytestmark = pytest.mark.django_db

RHEL = [{"productId": "479", "productName": "Red Hat Enterprise Linux Server"}]


def stored(system: System) -> str:
    return SystemCompliance.objects.get(system=system).status


def test_only_real_changes_of_what_the_engine_reads_reresolve(django_capture_on_commit_callbacks):
    org = acme()
    facts = {"cpu.cpu_socket(s)": "2", "network.fqdn": "a.example.com"}
    system = lifecycle.register_consumer(org, "a", facts, RHEL)
    assert stored(system) == "invalid"
    with django_capture_on_commit_callbacks() as sent:
        lifecycle.update_consumer(system, facts=dict(facts), installed_products=list(RHEL))
    assert sent == []  # the client re-sends unchanged facts: nothing happens
    with django_capture_on_commit_callbacks() as sent:
        lifecycle.update_consumer(system, facts={**facts, "network.fqdn": "b.example.com"})
    assert sent == []  # stored, but not a fact resolution reads
    assert System.objects.get(pk=system.pk).facts["network.fqdn"] == "b.example.com"
    with django_capture_on_commit_callbacks() as sent:
        lifecycle.update_consumer(system, facts={**facts, "cpu.cpu_socket(s)": "4"})
    assert len(sent) == 1  # sockets: re-resolution enqueued
    with django_capture_on_commit_callbacks() as sent:
        lifecycle.update_consumer(system, installed_products=[])
    assert len(sent) == 1 and stored(system) == "valid"  # nothing installed: compliant at once


def test_registration_attaches_only_when_asked():
    org = acme()
    subscribe(org, "RHEL-4G", 5)
    quiet = lifecycle.register_consumer(org, "quiet", {}, RHEL)
    assert not Entitlement.objects.filter(system=quiet).exists()
    asked = lifecycle.register_consumer(org, "asked", {}, RHEL, auto_attach=True)
    assert Entitlement.objects.filter(system=asked).exists() and stored(asked) == "valid"


@pytest.mark.django_db(transaction=True)  # two ingest applies: temp tables drop at commit
def test_stored_compliance_follows_revocation_and_host_unregister():
    org = acme()
    subscribe(org, "VDC", 1)
    host = report(org, "esx1", ["g1"])
    guest = lifecycle.register_consumer(org, "g1", {"virt.is_guest": "true", "virt.uuid": "G1"},
                                        RHEL, auto_attach=True)
    assert guest.current_host_id == host.id and stored(guest) == "valid"
    System.objects.filter(pk=host.pk).update(autoheal=False)  # nothing re-attaches the host
    host_ent = Entitlement.objects.get(system=host)
    subs.remove_entitlement(org, host_ent.uuid)  # the guest's derived entitlement goes with it
    assert not Entitlement.objects.filter(system=guest).exists()
    assert stored(guest) == "invalid" == subs.compliance_for(guest).status
    System.objects.filter(pk=host.pk).update(autoheal=True)
    subs.resolve_system(guest.id)
    assert stored(guest) == "valid"  # host auto-attach + derived pool again
    lifecycle.delete_system(org, host.uuid)  # unregistering the host: its guests re-resolved
    guest.refresh_from_db()
    assert guest.current_host_id is None
    assert not Entitlement.objects.filter(system=guest, pool__requires_host__isnull=False).exists()
    assert stored(guest) == subs.compliance_for(guest).status


def _der(system: System) -> bytes:
    cert = x509.load_pem_x509_certificate(system.identity.cert_pem.encode())
    return cert.public_bytes(serialization.Encoding.DER)


def test_periodic_reads_cost_a_constant_number_of_statements(client):
    org = acme()
    subscribe(org, "RHEL-4G", 50)
    bare = lifecycle.register_consumer(org, "bare", {}, [])
    busy = lifecycle.register_consumer(org, "busy", {"cpu.cpu_socket(s)": "8"}, RHEL,
                                       auto_attach=True)
    assert Entitlement.objects.filter(system=busy).exists()
    counts = {}
    for system in (bare, busy):
        for path in ("compliance", "certificates/serials"):
            url = f"/candlepin/consumers/{system.uuid}/{path}"
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url, **{"sam.client_cert": _der(system)})
            assert response.status_code == 200, response.content
            counts[(system.name, path)] = len(queries)
    assert counts[("bare", "compliance")] == counts[("busy", "compliance")] <= 3
    assert counts[("bare", "certificates/serials")] == counts[("busy", "certificates/serials")] <= 2


def test_activation_key_guesses_are_throttled(client, settings):
    from orgs import activation

    org = acme()
    activation.create_key(org, "real-key")
    url = "/candlepin/consumers?owner=ACME&activation_keys={}"
    body = {"type": "system", "name": "guess", "facts": {}}
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        response = client.post(url.format(f"guess-{attempt}"), body, content_type="application/json")
        assert response.status_code == 400, response.content
        assert response.json()["displayMessage"] == \
            "None of the activation keys specified exist for this org."
    locked = client.post(url.format("real-key"), body, content_type="application/json")
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0
    assert not System.objects.filter(org=org).exists()  # even the right key, once locked out
