"""Static files: content-hashed names and compressed copies once ``collectstatic`` has run.

``collectstatic`` writes ``sam.3f2a…css`` beside ``sam.css``, gzip (and brotli, when installed)
copies, and a manifest; WhiteNoise then serves the hashed names with a one-year, immutable cache
lifetime. ``./scripts/demo`` and the Docker image run it. Without it (tests, ``runserver`` on a
fresh checkout) pages link the plain names, which WhiteNoise serves from the apps with a short
cache lifetime: a missing manifest never breaks a page.
"""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class HashedStaticFilesStorage(CompressedManifestStaticFilesStorage):
    def stored_name(self, name: str) -> str:
        """The hashed name from the manifest; the plain name when the manifest lacks it (no
        ``collectstatic`` yet, or a file added since)."""
        try:
            return super().stored_name(name)
        except ValueError:
            return name
