"""Client certificates on ``manage.py serve``'s one port, handed to the views.

gunicorn verifies client certificates (``cert_reqs``/``ca_certs``) but does not put the peer
certificate into the WSGI environ (gunicorn issue #1930). ``ThreadWorker`` (gunicorn's gthread
worker) notes the verified peer certificate of the connection in a thread-local before the
request is handled, and ``application`` (wrapping Django's) copies it into
``environ["sam.client_cert"]`` (DER bytes): in gthread a request runs start to end on one
thread.

A response that replaces the client's identity certificate (``close_after_response``) closes
the connection: a keep-alive client (subscription-manager 1.29's rhsmcertd-worker regenerates its
certificate and goes on on the same connection) then opens a new one with its new certificate,
instead of presenting the revoked one again.

Behind a TLS-terminating proxy the proxy's verified client certificate arrives in the header
``SAM_CLIENT_CERT_HEADER`` (default ``X-SSL-Client-Cert``; URL-escaped PEM as nginx's
``$ssl_client_escaped_cert``), believed only from a peer in ``SAM_FORWARDED_ALLOW_IPS``. Either
way ``orgs.certauth`` re-checks the certificate (chain, validity, serial) itself.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from urllib.parse import unquote

from django.conf import settings
from gunicorn.workers.gthread import ThreadWorker as _GthreadWorker

ENVIRON_KEY = "sam.client_cert"
MAX_HEADER_CERT = 16 * 1024

_current = threading.local()


class ThreadWorker(_GthreadWorker):
    """gunicorn's gthread worker that passes the TLS peer certificate on to the application."""

    def handle_request(self, req, conn):
        sock = conn.sock
        der = None
        if isinstance(sock, ssl.SSLSocket):
            try:
                der = sock.getpeercert(binary_form=True)
            except (ValueError, OSError):
                der = None
        _current.der = der
        _current.close = False
        try:
            return super().handle_request(req, conn)
        finally:
            _current.der = None
            _current.close = False


def close_after_response() -> None:
    """The certificate this connection authenticated with was just replaced: end the connection
    with this response (``Connection: close``), so the client's next request comes on a new one."""
    _current.close = True


def wrap(app):
    """The WSGI application with ``environ["sam.client_cert"]`` set from the TLS layer."""

    from sam import pki

    pki.KEYS.prime()  # consumer key pairs made ahead, at idle priority, in this web process

    def application(environ, start_response):
        environ[ENVIRON_KEY] = getattr(_current, "der", None)

        def start(status, headers, exc_info=None):
            # gunicorn drops an application's Connection header: ask its response object.
            response = getattr(start_response, "__self__", None)
            if getattr(_current, "close", False) and hasattr(response, "force_close"):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return application


def _trusted_proxy(address: str | None) -> bool:
    allowed = settings.SAM_FORWARDED_ALLOW_IPS
    if not allowed or not address:
        return False
    if "*" in allowed:
        return True
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for item in allowed:
        try:
            if ipaddress.ip_address(item) == peer:
                return True
        except ValueError:
            continue
    return False


def _header_meta_name() -> str:
    name = getattr(settings, "SAM_CLIENT_CERT_HEADER", "X-SSL-Client-Cert")
    return "HTTP_" + name.upper().replace("-", "_")


def presented_certificate(request) -> bytes | None:
    """The client certificate of the request (DER or PEM bytes), or None: from sam's own TLS
    layer, else from the proxy header when the direct peer is a trusted proxy."""
    der = request.META.get(ENVIRON_KEY)
    if der:
        return der
    raw = request.META.get(_header_meta_name())
    if not raw or not _trusted_proxy(request.META.get("REMOTE_ADDR")):
        return None
    if len(raw) > MAX_HEADER_CERT * 3:
        return None
    text = unquote(raw).strip()
    if "-----BEGIN" not in text:
        return None
    # Some proxies fold the PEM into one line with spaces (Apache, Traefik): restore it.
    if "\n" not in text:
        head, _, rest = text.partition("-----BEGIN CERTIFICATE-----")
        body, _, _tail = rest.partition("-----END CERTIFICATE-----")
        text = ("-----BEGIN CERTIFICATE-----\n" + "\n".join(body.split())
                + "\n-----END CERTIFICATE-----\n")
    return text.encode("ascii", "replace")
