"""Web UI routes: sign-in, the home redirect and every org's pages under ``/o/<org_key>/``."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from sam import ui

urlpatterns = [
    path("", ui.home, name="home"),
    path("accounts/login/", ui.SignInView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("o/<slug:org_key>/", include("sam.dashboard_urls")),
    path("o/<slug:org_key>/", include("orgs.urls")),
    path("o/<slug:org_key>/", include("hypervisors.urls")),
    path("o/<slug:org_key>/", include("subscriptions.urls")),
]
