"""``manage.py serve`` (gunicorn with TLS) and the self-signed certificate of ``sam/tls.py``."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from django.core.management import call_command
from django.core.management.base import CommandError
from gunicorn.config import Config

from sam import tls
from sam.management.commands.serve import Command
from tests import rhsm_helper


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- sam/tls.py ------------------------------------------------------------------------------


def test_self_signed_created_once_then_reused(tmp_path):
    directory = tmp_path / "tls"
    cert_path, key_path, created = tls.ensure_self_signed(directory)
    assert created and cert_path == directory / "sam.crt" and key_path == directory / "sam.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = cert_path.read_bytes(), key_path.read_bytes()

    again = tls.ensure_self_signed(directory)
    assert again == (cert_path, key_path, False)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first

    key_path.unlink()  # half a pair is useless: a new pair replaces it
    _, _, created = tls.ensure_self_signed(directory)
    assert created and cert_path.read_bytes() != first[0]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_self_signed_certificate_contents(tmp_path, monkeypatch):
    monkeypatch.setattr(tls.socket, "gethostname", lambda: "sam-box")
    monkeypatch.setattr(tls.socket, "getfqdn", lambda: "sam-box.example.com")
    cert_path, _, _ = tls.ensure_self_signed(tmp_path)
    cert = _cert(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sam-box", "sam-box.example.com"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=725) < lifetime < timedelta(days=735)
    assert cert.not_valid_before_utc <= datetime.now(UTC) < cert.not_valid_after_utc
    assert cert.public_key().key_size == 2048
    info = tls.certificate_info(cert_path)
    assert info.sha256 == tls.fingerprint(cert) and len(info.sha256) == 95


def test_host_names_skip_duplicates_and_addresses(monkeypatch):
    monkeypatch.setattr(tls.socket, "gethostname", lambda: "localhost")
    monkeypatch.setattr(tls.socket, "getfqdn", lambda: "10.0.0.5")
    assert tls.host_names() == ["localhost"]


# --- the command's options ---------------------------------------------------------------------


@pytest.fixture
def data_dir(settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path
    for name in ("SAM_TLS_CERT", "SAM_TLS_KEY", "SAM_BIND", "SAM_FORWARDED_ALLOW_IPS", "SAM_CA_CERT",
                 "SAM_CA_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def pair(tmp_path):
    cert_pem, key_pem = tls.generate(["localhost"])
    (tmp_path / "own.crt").write_bytes(cert_pem)
    (tmp_path / "own.key").write_bytes(key_pem)
    return str(tmp_path / "own.crt"), str(tmp_path / "own.key")


@pytest.mark.parametrize("args, message", [
    (["--certfile", "/x.crt"], "Give both --certfile and --keyfile"),
    (["--keyfile", "/x.key"], "Give both --certfile and --keyfile"),
    (["--no-tls", "--certfile", "/x.crt", "--keyfile", "/x.key"], "--no-tls serves plain HTTP"),
    (["--certfile", "/no/such.crt", "--keyfile", "/no/such.key"], "does not exist"),
    (["--bind", "8443"], "is not HOST:PORT"),
    (["--bind", "0.0.0.0:99999"], "is not HOST:PORT"),
    (["--bind", "::1:8443"], "goes in brackets"),
    (["--bind", "[nope]:8443"], "is not an IPv6 address"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--timeout", "-1"], "--timeout must be 0"),
])
def test_bad_options_are_command_errors(data_dir, args, message):
    with pytest.raises(CommandError, match=message.replace("[", r"\[")):
        call_command("serve", *args)


def test_mismatched_or_garbage_pair_is_refused(data_dir, pair, tmp_path):
    other_cert, _ = tls.generate(["localhost"])
    (tmp_path / "other.crt").write_bytes(other_cert)
    with pytest.raises(CommandError, match="not a usable PEM certificate and matching"):
        call_command("serve", "--certfile", str(tmp_path / "other.crt"), "--keyfile", pair[1])
    (tmp_path / "garbage.crt").write_text("not a certificate")
    with pytest.raises(CommandError, match="not a usable PEM certificate"):
        call_command("serve", "--certfile", str(tmp_path / "garbage.crt"), "--keyfile", pair[1])


def test_environment_half_pair_and_bad_proxy_list(data_dir, pair, monkeypatch):
    monkeypatch.setenv("SAM_TLS_CERT", pair[0])
    with pytest.raises(CommandError, match="Set both SAM_TLS_CERT and SAM_TLS_KEY"):
        call_command("serve")
    monkeypatch.setenv("SAM_TLS_KEY", pair[1])
    monkeypatch.setenv("SAM_FORWARDED_ALLOW_IPS", "10.0.0.1, proxy.example.com")
    with pytest.raises(CommandError, match="'proxy.example.com' is not an IP address"):
        call_command("serve")
    monkeypatch.setenv("SAM_BIND", "nonsense")
    with pytest.raises(CommandError, match="--bind 'nonsense' is not HOST:PORT"):
        call_command("serve")


def _accepted_by_gunicorn(options: dict) -> Config:
    config = Config()
    for name, value in options.items():
        config.set(name, value)
    return config


def test_defaults_self_signed_and_gunicorn_settings(data_dir, capsys):
    options = Command().gunicorn_options()
    assert options["bind"] == ["0.0.0.0:8443"] and options["workers"] == 2
    assert options["threads"] == 4 and options["worker_class"] == "sam.clientcert.ThreadWorker"
    assert options["cert_reqs"] == ssl.CERT_OPTIONAL
    assert options["ca_certs"] == str(data_dir / "pki" / "ca.crt")
    assert options["timeout"] == 120
    assert options["certfile"] == str(data_dir / "tls" / "sam.crt")
    assert options["keyfile"] == str(data_dir / "tls" / "sam.key")
    out = capsys.readouterr().out
    fingerprint = tls.fingerprint(_cert(data_dir / "tls" / "sam.crt"))
    assert f"Created server certificate {data_dir / 'tls' / 'sam.crt'}" in out
    assert fingerprint in out
    config = _accepted_by_gunicorn(options)
    assert config.forwarded_allow_ips == []  # gunicorn's own default would trust 127.0.0.1
    assert config.is_ssl and config.threads == 4
    assert config.worker_class.__name__ == "ThreadWorker" and config.cert_reqs == ssl.CERT_OPTIONAL

    Command().gunicorn_options()
    out = capsys.readouterr().out
    assert "Using server certificate" in out and fingerprint in out


def test_environment_fallbacks_and_explicit_options(data_dir, pair, monkeypatch):
    monkeypatch.setenv("SAM_BIND", "[::]:9443")
    monkeypatch.setenv("SAM_TLS_CERT", pair[0])
    monkeypatch.setenv("SAM_TLS_KEY", pair[1])
    monkeypatch.setenv("SAM_FORWARDED_ALLOW_IPS", "10.0.0.1,::1")
    options = Command().gunicorn_options()
    assert options["bind"] == ["[::]:9443"] and (options["certfile"], options["keyfile"]) == pair
    assert _accepted_by_gunicorn(options).forwarded_allow_ips == ["10.0.0.1", "::1"]
    assert not (data_dir / "tls").exists()

    options = Command().gunicorn_options(bind="127.0.0.1:8000", workers=3, threads=1, timeout=0,
                                         no_tls=True)
    assert options["bind"] == ["127.0.0.1:8000"] and "certfile" not in options
    config = _accepted_by_gunicorn(options)
    assert not config.is_ssl and config.workers == 3 and config.timeout == 0


def test_expiring_certificate_warns(data_dir, capsys):
    directory = data_dir / "tls"
    directory.mkdir()
    cert_pem, key_pem = tls.generate(["localhost"], days=3)
    (directory / "sam.crt").write_bytes(cert_pem)
    (directory / "sam.key").write_bytes(key_pem)
    Command().gunicorn_options()
    captured = capsys.readouterr()
    assert "Using server certificate" in captured.out  # an upgraded installation's pair
    assert "The server certificate expires on" in captured.err
    assert (directory / "sam.crt").read_bytes() == cert_pem  # reused, never silently replaced


# --- a real server --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_serve_answers_over_tls_with_its_self_signed_certificate(tmp_path):
    server = rhsm_helper.start_server(tmp_path / "data")
    try:
        status, data = server.get_json("/candlepin/status/")  # verified: cafile + IP SAN
        assert status == 200 and data["result"] is True
        status, data = server.get_json("/rhsm/status")
        assert status == 200 and "hypervisors_heartbeat" in data["managerCapabilities"]
        with pytest.raises(urllib.error.URLError) as caught:  # a client without the CA refuses it
            urllib.request.urlopen(server.url + "/candlepin/status/", timeout=10,
                                   context=ssl.create_default_context())
        assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)
    finally:
        code = rhsm_helper.stop_server(server)
    log = server.log()
    assert "Created server certificate" in log and "SHA-256 fingerprint" in log
    assert tls.fingerprint(_cert(server.cert_path)) in log
    assert stat.S_IMODE((server.data_dir / "tls" / "sam.key").stat().st_mode) == 0o600
    assert "Listening at: https://127.0.0.1" in log and "Traceback" not in log
    assert code == 0, log[-4000:]

    # A second start reuses the certificate.
    first = server.cert_path.read_bytes()
    again = rhsm_helper.start_server(tmp_path / "data")
    try:
        assert again.get_json("/candlepin/status/")[0] == 200
    finally:
        rhsm_helper.stop_server(again)
    assert "Using server certificate" in again.log()
    assert again.cert_path.read_bytes() == first
