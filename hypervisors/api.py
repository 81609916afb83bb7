"""REST API v1 resources of this app (see sam/api/urls.py)."""

ROUTES: list = []
