"""``/api/v1/``: every app contributes ``ROUTES`` (prefix, viewset, basename) from its ``api``
module; the OpenAPI schema and its viewers are served from installed packages (no CDN)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from hypervisors import api as hypervisors_api
from orgs import api as orgs_api
from subscriptions import api as subscriptions_api

router = SimpleRouter(trailing_slash=True)
for module in (orgs_api, hypervisors_api, subscriptions_api):
    for prefix, viewset, basename in module.ROUTES:
        router.register(prefix, viewset, basename=basename)

urlpatterns = [
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
