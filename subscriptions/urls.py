"""Web UI pages of this app (mounted under /o/<org_key>/ by sam/ui_urls.py)."""

from django.urls import path

from subscriptions import views
from subscriptions.manifest import views as manifest_views

app_name = "subscriptions"
urlpatterns = [
    path("subscriptions/", views.SubscriptionListView.as_view(), name="subscription_list"),
    path("subscriptions/export.csv", views.SubscriptionExportView.as_view(),
         name="subscription_export"),
    path("subscriptions/new/", views.SubscriptionCreateView.as_view(), name="subscription_create"),
    path("subscriptions/import/", views.ImportView.as_view(), name="import"),
    path("subscriptions/manifest/", manifest_views.ManifestView.as_view(), name="manifest"),
    path("subscriptions/manifest/delete/", manifest_views.ManifestDeleteView.as_view(),
         name="manifest_delete"),
    path("subscriptions/<uuid:uuid>/", views.SubscriptionDetailView.as_view(), name="subscription_detail"),
    path("subscriptions/<uuid:uuid>/edit/", views.SubscriptionEditView.as_view(), name="subscription_edit"),
    path("subscriptions/<uuid:uuid>/delete/", views.SubscriptionDeleteView.as_view(),
         name="subscription_delete"),
    path("pools/", views.PoolListView.as_view(), name="pool_list"),
    path("pools/<uuid:uuid>/", views.PoolDetailView.as_view(), name="pool_detail"),
    path("products/", views.ProductListView.as_view(), name="product_list"),
]
