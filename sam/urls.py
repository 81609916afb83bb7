from django.contrib import admin
from django.http import HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.urls import include, path

from orgs.auth import AdminLoginForm
from sam import metrics, pub

admin.site.login_form = AdminLoginForm  # the credential throttle on the operators' sign-in too


def health(request):
    """Liveness probe for load balancers and the README's smoke check."""
    return JsonResponse({"status": "ok"})


def favicon(request):
    """``/favicon.ico`` for pages without a ``<link rel="icon">`` (the admin, plain responses):
    the static icon under its current (content-hashed) name."""
    response = HttpResponseRedirect(static("sam/favicon.ico"))
    response["Cache-Control"] = "max-age=86400"
    return response


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health, name="health"),
    path("metrics", metrics.view, name="metrics"),
    path("favicon.ico", favicon, name="favicon"),
    path("api/", include("sam.api.urls")),
    path("candlepin/", include("sam.candlepin.urls")),
    path("rhsm/", include("sam.candlepin.urls")),
    # RHEL's default prefix: a bare --serverurl https://sam.example.com works
    path("subscription/", include("sam.candlepin.urls")),
    path("pub/sam-ca.pem", pub.ca_pem, name="pub-ca"),
    path("pub/bootstrap.sh", pub.bootstrap_sh, name="pub-bootstrap"),
    path("", include("sam.ui_urls")),
]
