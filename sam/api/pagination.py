"""Pages with a hard maximum; cursor pages for the big lists (systems, guests)."""

from rest_framework.pagination import CursorPagination, LimitOffsetPagination


class LimitOffset(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class IdCursor(CursorPagination):
    """Stable pages over tens of thousands of rows: no OFFSET scans, no duplicates on inserts."""

    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 500
    ordering = "id"
