"""Web UI pages of this app (mounted under /o/<org_key>/ by sam/ui_urls.py)."""

app_name = "orgs"
urlpatterns: list = []
