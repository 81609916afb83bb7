"""Web UI pages of this app (mounted under /o/<org_key>/ by sam/ui_urls.py)."""

from django.urls import path

from orgs import views

app_name = "orgs"
urlpatterns = [
    path("settings/", views.SettingsView.as_view(), name="settings"),
    path("members/", views.MembersView.as_view(), name="members"),
    path("tokens/", views.TokensView.as_view(), name="tokens"),
    path("setup/", views.SetupView.as_view(), name="setup"),
    path("setup/download/", views.SetupDownloadView.as_view(), name="setup_download"),
    path("register/", views.RegisterSystemView.as_view(), name="register"),
    path("activation-keys/", views.ActivationKeysView.as_view(), name="activation_keys"),
]
