"""The dashboard page (sam/dashboard.py)."""

app_name = "sam"
urlpatterns: list = []
