"""``/api/v1/``: every app contributes ``ROUTES`` (prefix, viewset, basename) from its ``api``
module; the OpenAPI schema and its viewers are served from installed packages (no CDN)."""

from csp.constants import NONCE
from csp.decorators import csp_update
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.routers import SimpleRouter

from hypervisors import api as hypervisors_api
from orgs import api as orgs_api
from subscriptions import api as subscriptions_api
from subscriptions.manifest import api as manifest_api

router = SimpleRouter(trailing_slash=True)
for module in (orgs_api, hypervisors_api, subscriptions_api):
    for prefix, viewset, basename in module.ROUTES:
        router.register(prefix, viewset, basename=basename)

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/", include(manifest_api.urlpatterns)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The two viewers under the site's Content-Security-Policy (sam/settings.py), with only what
    # they need added: Swagger UI's stylesheet draws its icons from data: URLs; ReDoc inserts
    # <style> elements (given the response's nonce) and runs its search in a blob: worker.
    path("docs/", csp_update({"img-src": ["data:"]})(SpectacularSwaggerSplitView.as_view(
        url_name="api-schema", template_name="sam/api/swagger_ui.html")), name="api-docs"),
    path("redoc/", csp_update({"style-src": [NONCE], "img-src": ["data:"], "worker-src": ["blob:"]})(
        SpectacularRedocView.as_view(url_name="api-schema", template_name="sam/api/redoc.html")),
        name="api-redoc"),
]
