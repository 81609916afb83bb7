"""sam's CA (``sam/pki.py``), the bootstrap files (``sam/pub.py``) and optional client
certificates on ``manage.py serve`` (``sam/clientcert.py``)."""

from __future__ import annotations

import ssl
import stat
import subprocess
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from sam import pki, tls
from tests import rhsm_helper


@pytest.fixture
def data_dir(settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path
    for name in ("SAM_TLS_CERT", "SAM_TLS_KEY", "SAM_CA_CERT", "SAM_CA_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_ca_created_once_and_signs_the_server_certificate(data_dir, settings):
    settings.SAM_HOSTNAME = "sam.example.com"
    cert_path, key_path, created = pki.ensure_ca()
    assert created and cert_path == data_dir / "pki" / "ca.crt"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pki.ensure_ca() == (cert_path, key_path, False)
    ca = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    chain, _, created = pki.ensure_server_cert(data_dir / "tls")
    assert created
    leaf, issuer = x509.load_pem_x509_certificates(chain.read_bytes())
    assert issuer == ca and leaf.issuer == ca.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sam.example.com" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    # The chain file verifies as a CA file (it carries the CA) for a TLS client.
    context = ssl.create_default_context(cafile=str(chain))
    assert context.get_ca_certs()


def test_operator_brings_the_ca(data_dir, monkeypatch, tmp_path_factory):
    own = tmp_path_factory.mktemp("own")
    cert_pem, key_pem = pki._make_ca()
    (own / "ca.pem").write_bytes(cert_pem)
    (own / "ca.key").write_bytes(key_pem)
    monkeypatch.setenv("SAM_CA_CERT", str(own / "ca.pem"))
    monkeypatch.setenv("SAM_CA_KEY", str(own / "ca.key"))
    assert pki.authority().cert_pem == cert_pem
    assert not (data_dir / "pki" / "ca.crt").exists()
    assert pki.trust_bundle() == cert_pem


def test_legacy_self_signed_certificate_stays_trusted(data_dir):
    (data_dir / "tls").mkdir()
    cert_pem, key_pem = tls.generate(["localhost"])
    (data_dir / "tls" / "sam.crt").write_bytes(cert_pem)
    (data_dir / "tls" / "sam.key").write_bytes(key_pem)
    path, _, created = pki.ensure_server_cert(data_dir / "tls")
    assert not created and path.read_bytes() == cert_pem
    bundle = pki.trust_bundle()
    assert bundle.startswith(pki.authority().cert_pem) and cert_pem in bundle


@pytest.mark.django_db
def test_pub_files_need_no_authentication(data_dir, client):
    response = client.get("/pub/sam-ca.pem")
    assert response.status_code == 200
    assert x509.load_pem_x509_certificate(response.content) == pki.authority().cert
    response = client.get("/pub/bootstrap.sh", HTTP_HOST="sam.example.com:8443", secure=True)
    assert response.status_code == 200
    script = response.content.decode()
    assert script.startswith("#!/bin/sh") and "/etc/rhsm/ca/sam-ca.pem" in script
    assert "--server.hostname=sam.example.com --server.port=8443" in script
    assert "--server.prefix=/candlepin" in script
    assert pki.authority().cert_pem.decode().strip() in script
    # It is a valid POSIX shell script.
    subprocess.run(["sh", "-n"], input=response.content, check=True)
    assert client.post("/pub/sam-ca.pem").status_code == 405


def client_pair(directory, org: str, cn: str, signer=None):
    """A client certificate + key file signed by sam's CA (or ``signer`` = (cert, key))."""
    key = pki.new_key()
    if signer is None:
        cert = pki.issue_identity(org, cn, "test", key.public_key(), pki.new_serial())
    else:
        from datetime import UTC, datetime, timedelta

        from cryptography.hazmat.primitives import hashes

        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(signer[0].subject).public_key(key.public_key())
                .serial_number(pki.new_serial()).not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(days=1)).sign(signer[1], hashes.SHA256()))
    cert_file, key_file = directory / f"{cn}.pem", directory / f"{cn}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def foreign_ca():
    cert_pem, key_pem = pki._make_ca()
    return (x509.load_pem_x509_certificate(cert_pem),
            serialization.load_pem_private_key(key_pem, None))


@pytest.mark.django_db(transaction=True)
def test_serve_asks_for_client_certificates_optionally(tmp_path, settings):
    server = rhsm_helper.start_server(tmp_path / "data")
    settings.DATA_DIR = server.data_dir  # the same CA as the server
    try:
        # Anonymous: works (the chain file is a CA file).
        assert server.get_json("/candlepin/status/")[0] == 200
        own = client_pair(tmp_path, "ACME", "c1")
        context = server.ssl_context()
        context.load_cert_chain(*own)
        with urllib.request.urlopen(server.url + "/subscription/status", context=context,
                                    timeout=10) as response:
            assert response.status == 200
        # A certificate from another CA fails the handshake.
        other = client_pair(tmp_path, "ACME", "c2", signer=foreign_ca())
        context = server.ssl_context()
        context.load_cert_chain(*other)
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(server.url + "/candlepin/status", context=context, timeout=10)
        with urllib.request.urlopen(server.url + "/pub/sam-ca.pem", context=server.ssl_context(),
                                    timeout=10) as response:
            assert response.read().startswith(b"-----BEGIN CERTIFICATE-----")
    finally:
        rhsm_helper.stop_server(server)
    assert "Traceback" not in server.log()
