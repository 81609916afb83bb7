"""``manage.py serve``: the production web server (gunicorn, gthread workers) with TLS.

virt-who's client library only speaks HTTPS, so TLS is on by default: the certificate and key
come from ``--certfile/--keyfile`` (or ``SAM_TLS_CERT/SAM_TLS_KEY``); without them a
pair issued by sam's CA (``sam/pki.py``) is created once in ``$SAM_DATA_DIR/tls`` and reused
afterwards (an upgraded installation's self-signed pair stays in use). Client certificates are
asked for optionally and verified against sam's CA (``sam/clientcert.py``).
``--no-tls`` serves plain HTTP for a TLS-terminating proxy in front.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from sam import env, metrics, pki, tls

DEFAULT_BIND = "0.0.0.0:8443"
EXPIRY_WARNING = timedelta(days=30)


def parse_bind(value: str) -> str:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``; ``CommandError`` otherwise."""
    value = (value or "").strip()
    if value.startswith("unix:"):
        if len(value) <= len("unix:"):
            raise CommandError("--bind unix: needs a socket path, e.g. unix:/run/sam.sock.")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CommandError(f"--bind {value!r} is not HOST:PORT (e.g. 0.0.0.0:8443, [::]:8443) "
                           "with a port from 1 to 65535.")
    if host.startswith("[") != host.endswith("]"):
        raise CommandError(f"--bind {value!r}: an IPv6 address goes in brackets, e.g. [::1]:8443.")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise CommandError(f"--bind {value!r}: {host} is not an IPv6 address.") from None
    elif ":" in host:
        raise CommandError(f"--bind {value!r}: an IPv6 address goes in brackets, e.g. [::1]:8443.")
    return value


def parse_forwarded_allow_ips(value: str | None) -> list[str]:
    """``SAM_FORWARDED_ALLOW_IPS``: comma-separated proxy addresses (or ``*``); none if unset."""
    try:
        return env.forwarded_allow_ips({"SAM_FORWARDED_ALLOW_IPS": value or ""})
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from None


def _check_pair(certfile: str, keyfile: str, origin: str) -> tuple[str, str]:
    for path, what in ((certfile, "certificate"), (keyfile, "key")):
        if not os.path.isfile(path):
            raise CommandError(f"{origin}: the {what} file {path!r} does not exist.")
        if not os.access(path, os.R_OK):
            raise CommandError(f"{origin}: the {what} file {path!r} is not readable.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CommandError(f"{origin}: {certfile!r} and {keyfile!r} are not a usable PEM "
                           f"certificate and matching unencrypted private key ({exc}).") from None
    return os.path.abspath(certfile), os.path.abspath(keyfile)


def _application_class():
    from gunicorn.app.base import BaseApplication

    class SamApplication(BaseApplication):
        """gunicorn with settings given in code (no config file, no GUNICORN_CMD_ARGS)."""

        def __init__(self, options: dict):
            self.options = options
            super().__init__()

        def load_config(self):
            for name, value in self.options.items():
                self.cfg.set(name, value)

        def load(self):
            from sam import clientcert
            from sam.wsgi import application

            return clientcert.wrap(application)

    return SamApplication


class Command(BaseCommand):
    help = ("Run the web server (gunicorn) over HTTPS. Without a certificate one issued by sam's CA "
            "is created once in $SAM_DATA_DIR/tls. Environment: SAM_BIND, SAM_TLS_CERT, "
            "SAM_TLS_KEY, SAM_FORWARDED_ALLOW_IPS.")

    def add_arguments(self, parser):
        parser.add_argument("--bind", metavar="HOST:PORT",
                            help=f"address to listen on (default $SAM_BIND or {DEFAULT_BIND}; "
                                 "[::]:8443 for IPv6, unix:/path for a socket)")
        parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--threads", type=int, default=4,
                            help="threads per worker process (default 4)")
        parser.add_argument("--timeout", type=int, default=120,
                            help="seconds before a silent worker is killed and restarted "
                                 "(default 120; 0 disables)")
        parser.add_argument("--certfile", help="PEM certificate (chain) file (default $SAM_TLS_CERT)")
        parser.add_argument("--keyfile", help="PEM private key file (default $SAM_TLS_KEY)")
        parser.add_argument("--no-tls", action="store_true",
                            help="serve plain HTTP (only behind a TLS-terminating proxy)")

    def handle(self, *args, bind, workers, threads, timeout, certfile, keyfile, no_tls, **options):
        options = self.gunicorn_options(bind=bind, workers=workers, threads=threads, timeout=timeout,
                                        certfile=certfile, keyfile=keyfile, no_tls=no_tls)
        scheme = "http" if no_tls else "https"
        self.stdout.write(f"sam serving {scheme}://{options['bind'][0]} "
                          f"({workers} worker(s) x {threads} thread(s))")
        self.stdout.flush()
        # The workers are forked from this process: none may inherit its database connection.
        connections.close_all()
        _application_class()(options).run()

    def gunicorn_options(self, *, bind=None, workers=2, threads=4, timeout=120, certfile=None,
                         keyfile=None, no_tls=False) -> dict:
        """Validated gunicorn settings; prints where the certificate comes from."""
        if workers < 1:
            raise CommandError(f"--workers must be at least 1, not {workers}.")
        if threads < 1:
            raise CommandError(f"--threads must be at least 1, not {threads}.")
        if timeout < 0:
            raise CommandError(f"--timeout must be 0 (no timeout) or more seconds, not {timeout}.")
        bind = parse_bind(bind if bind is not None else os.environ.get("SAM_BIND") or DEFAULT_BIND)
        options = {
            "bind": [bind],
            "workers": workers,
            "threads": threads,
            # gthread that hands the verified client certificate to the views (sam/clientcert.py)
            "worker_class": "sam.clientcert.ThreadWorker",
            "timeout": timeout,
            "proc_name": "sam",
            # gunicorn's own default trusts 127.0.0.1 (or $FORWARDED_ALLOW_IPS): only ours counts.
            "forwarded_allow_ips": ",".join(parse_forwarded_allow_ips(
                os.environ.get("SAM_FORWARDED_ALLOW_IPS"))),
            # Metrics files of processes gone (sam/metrics.py): forgotten at start, and the
            # bookkeeping of each worker process that exits.
            "on_starting": lambda server: metrics.forget_dead_processes(),
            "child_exit": lambda server, worker: metrics.process_exited(worker.pid),
        }
        if no_tls:
            if certfile or keyfile:
                raise CommandError("--no-tls serves plain HTTP: do not give --certfile/--keyfile.")
            return options
        options["certfile"], options["keyfile"] = self.certificate(certfile, keyfile)
        # Client certificates are optional on the one port (Basic and anonymous requests keep
        # working) and verified against sam's CA: subscription-manager's identity certificates.
        try:
            ca_cert, _, _ = pki.ensure_ca()
        except (OSError, ImproperlyConfigured) as exc:
            raise CommandError(f"Cannot create or read sam's CA: {exc}") from None
        options["cert_reqs"] = ssl.CERT_OPTIONAL
        options["ca_certs"] = str(ca_cert)
        return options

    def certificate(self, certfile: str | None, keyfile: str | None) -> tuple[str, str]:
        if certfile or keyfile:
            if not (certfile and keyfile):
                raise CommandError("Give both --certfile and --keyfile, or neither (a certificate "
                                   "issued by sam's CA is then used).")
            return _check_pair(certfile, keyfile, "--certfile/--keyfile")
        env_cert = (os.environ.get("SAM_TLS_CERT") or "").strip()
        env_key = (os.environ.get("SAM_TLS_KEY") or "").strip()
        if env_cert or env_key:
            if not (env_cert and env_key):
                raise CommandError("Set both SAM_TLS_CERT and SAM_TLS_KEY, or neither (a "
                                   "CA-issued certificate is then used).")
            return _check_pair(env_cert, env_key, "SAM_TLS_CERT/SAM_TLS_KEY")
        directory = Path(settings.DATA_DIR) / "tls"
        try:
            cert_path, key_path, created = pki.ensure_server_cert(directory)
            info = tls.certificate_info(cert_path)
            ca_fp = pki.ca_fingerprint()
        except (OSError, ValueError, ImproperlyConfigured) as exc:
            raise CommandError(f"Cannot create or read the server certificate in "
                               f"{directory}: {exc}") from None
        verb = "Created" if created else "Using"
        self.stdout.write(f"{verb} server certificate {cert_path}")
        self.stdout.write(f"  SHA-256 fingerprint {info.sha256}")
        self.stdout.write(f"  names {', '.join(info.dns_names + info.ip_addresses)}; "
                          f"valid until {info.not_after:%Y-%m-%d}")
        self.stdout.write(f"  sam CA SHA-256 fingerprint {ca_fp}")
        if created:
            self.stdout.write("  Clients must trust sam's CA: GET /pub/sam-ca.pem (or "
                              "/pub/bootstrap.sh) installs it as /etc/rhsm/ca/sam-ca.pem.")
        now = datetime.now(UTC)
        if info.not_after <= now:
            self.stderr.write(self.style.WARNING(
                f"The server certificate expired on {info.not_after:%Y-%m-%d}: delete "
                f"{cert_path} and {key_path} to get a new one at the next start."))
        elif info.not_after - now < EXPIRY_WARNING:
            self.stderr.write(self.style.WARNING(
                f"The server certificate expires on {info.not_after:%Y-%m-%d}: delete "
                f"{cert_path} and {key_path} to get a new one at the next start."))
        return str(cert_path), str(key_path)
