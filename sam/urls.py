from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path


def health(request):
    """Liveness probe for load balancers and the README's smoke check."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("api/", include("sam.api.urls")),
    path("candlepin/", include("sam.candlepin.urls")),
    path("rhsm/", include("sam.candlepin.urls")),
    path("", include("sam.ui_urls")),
]
