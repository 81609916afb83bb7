"""The dashboard page (sam/dashboard.py)."""

from django.urls import path

from sam import dashboard

app_name = "sam"
urlpatterns = [
    path("", dashboard.DashboardView.as_view(), name="dashboard"),
]
