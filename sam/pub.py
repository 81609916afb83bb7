"""Unauthenticated bootstrap files: sam's CA and a script that points subscription-manager at sam.

``GET /pub/sam-ca.pem`` is what every client installs (consumer-api.md section 1: one file);
``GET /pub/bootstrap.sh`` installs it as ``/etc/rhsm/ca/sam-ca.pem`` and runs
``subscription-manager config`` with this server's host, port and ``/candlepin`` prefix.
"""

from __future__ import annotations

import shlex

from django.http import HttpResponse
from django.views.decorators.http import require_GET

from sam import pki

CA_PATH = "/etc/rhsm/ca/sam-ca.pem"


@require_GET
def ca_pem(request):
    response = HttpResponse(pki.trust_bundle(), content_type="application/x-pem-file")
    response["Content-Disposition"] = 'inline; filename="sam-ca.pem"'
    return response


def server_address(request) -> tuple[str, int]:
    """(host, port) the client reached sam at (``Host`` is validated by ALLOWED_HOSTS)."""
    host = request.get_host()
    default = 443 if request.is_secure() else 80
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        port = port.lstrip(":")
    else:
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name, int(port) if port.isdigit() else default


def bootstrap_command(request) -> str:
    """The one line the UI shows: the CA pinned by its key's SHA-256, since the first trust is
    explicit (consumer-api.md section 3)."""
    host, port = server_address(request)
    url = f"https://{host}:{port}/pub/bootstrap.sh"
    return f"curl --insecure --pinnedpubkey '{pki.ca_pin()}' -fsS {shlex.quote(url)} | sh"


@require_GET
def bootstrap_sh(request):
    host, port = server_address(request)
    bundle = pki.trust_bundle().decode("ascii")
    script = f"""#!/bin/sh
# Points subscription-manager at sam ({host}:{port}) and installs sam's CA.
set -eu
mkdir -p /etc/rhsm/ca
umask 022
cat > {CA_PATH}.tmp <<'SAM_CA_EOF'
{bundle.strip()}
SAM_CA_EOF
mv {CA_PATH}.tmp {CA_PATH}
subscription-manager config --server.hostname={shlex.quote(host)} --server.port={port} \\
    --server.prefix=/candlepin --rhsm.repo_ca_cert={CA_PATH}
echo "sam: subscription-manager now uses {host}:{port}; register with:"
echo "  subscription-manager register --org <ORG> --username <USER>"
echo "  subscription-manager register --org <ORG> --activationkey <KEY>"
"""
    return HttpResponse(script, content_type="text/x-shellscript; charset=utf-8")
