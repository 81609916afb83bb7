"""Pages with a hard maximum; cursor pages for the big lists (systems, guests)."""

from datetime import UTC, datetime

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination, LimitOffsetPagination

from sam import inputs


class LimitOffset(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

    def get_offset(self, request) -> int:
        """An OFFSET the database can take (``?offset=10**30`` is a 400, not a 500)."""
        offset = super().get_offset(request)
        if offset > inputs.INT64_MAX - self.max_limit:
            raise ValidationError({"offset": [f"Must be at most {inputs.INT64_MAX - self.max_limit}."]})
        return offset


class IdCursor(CursorPagination):
    """Stable pages over tens of thousands of rows: no OFFSET scans, no duplicates on inserts."""

    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 500
    ordering = "id"

    def paginate_queryset(self, queryset, request, view=None):
        self.model = queryset.model  # decode_cursor checks positions against its fields
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        """A crafted cursor names no page (404) unless its position is a valid value of the
        ordering field: an id, a clean name, a date-time in range."""
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None:
            return cursor
        field = self.model._meta.get_field(self.ordering[0].lstrip("-"))
        try:
            value = field.to_python(inputs.check_text(cursor.position, "cursor"))
            if isinstance(value, int):
                inputs.check_int(value, "cursor", inputs.INT64_MIN, inputs.INT64_MAX)
            elif isinstance(value, datetime):
                inputs.check_datetime(value if value.tzinfo else value.replace(tzinfo=UTC), "cursor")
        except (DjangoValidationError, TypeError, ValueError):
            raise NotFound(self.invalid_cursor_message) from None
        return cursor
