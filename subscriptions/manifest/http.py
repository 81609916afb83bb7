"""Taking a manifest from an HTTP request, for the API, the Candlepin endpoint and the UI.

The file arrives as a multipart upload (Django streams it to a temporary file past 2.5 MB),
never as a form field held in memory; a request larger than ``SAM_MANIFEST_MAX_BYTES`` (plus
the multipart envelope) is refused by its Content-Length before anything is parsed.
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from subscriptions.manifest.reader import InvalidManifest

ENVELOPE = 1024 * 1024  # room for the multipart headers and the force fields


class TooLarge(Exception):
    """The upload exceeds the configured limit (413)."""

    def __init__(self) -> None:
        super().__init__(f"The manifest is larger than the limit of {settings.SAM_MANIFEST_MAX_BYTES} bytes "
                         "(SAM_MANIFEST_MAX_BYTES).")


def max_request_bytes() -> int:
    """The largest manifest request: the input middleware lets it through (sam/inputs.py)."""
    return settings.SAM_MANIFEST_MAX_BYTES + ENVELOPE


def check_length(request) -> None:
    """Refuse an oversized request by its declared length, before parsing the body."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.SAM_MANIFEST_MAX_BYTES + ENVELOPE:
        raise TooLarge()


def pick_file(files, names: tuple[str, ...] = ("file", "import")) -> UploadedFile:
    """The uploaded manifest: the field ``file`` (sam) or ``import`` (Katello), else the only one."""
    for name in names:
        if name in files:
            return files[name]
    if len(files) == 1:
        return next(iter(files.values()))
    raise InvalidManifest("Upload the manifest as a multipart file in the field 'file'.")


def read_file(upload: UploadedFile) -> bytes:
    """The bytes of the upload, at most the configured limit."""
    limit = settings.SAM_MANIFEST_MAX_BYTES
    if upload.size is not None and upload.size > limit:
        raise TooLarge()
    upload.seek(0)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise TooLarge()
    return data
