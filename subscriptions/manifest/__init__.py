"""Red Hat subscription manifests (issue 13; ``../shared/reference/manifest.md``).

``reader`` opens the signed zip in memory and parses what sam uses, ``signature`` checks it
against the upstream certificates the operator trusts, ``importer`` turns it into
subscriptions and pools (and reconciles a re-import), ``api`` / ``views`` are the native API
and the web pages; the Candlepin-compatible endpoints are in ``sam/candlepin/imports.py``.
"""
