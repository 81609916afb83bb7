"""The API's JSON parser: DRF's, with the input layer's rules (``sam.inputs``).

Bodies nested deeper than ``MAX_DEPTH``, holding NUL or unpaired surrogates (keys too),
integers outside 64 bits or NaN/Infinity are a 400 ``parse_error``. When the middleware has
already parsed and checked the body (``request.sam_json``), that document is reused.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from sam import inputs

_MISSING = object()


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = getattr(parser_context.get("request"), "_request", None)
        cached = getattr(request, "sam_json", _MISSING)
        if cached is not _MISSING:
            return cached
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            return inputs.loads(stream.read().decode(encoding), "The JSON body", strict=True)
        except inputs.BadInput as exc:
            raise ParseError(exc.text) from None
        except ValueError as exc:  # includes UnicodeDecodeError
            raise ParseError(f"JSON parse error - {exc}") from None
