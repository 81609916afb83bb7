"""Web UI pages of this app (mounted under /o/<org_key>/ by sam/ui_urls.py)."""

from django.urls import path

from hypervisors import views

app_name = "hypervisors"
urlpatterns = [
    path("hypervisors/", views.HypervisorListView.as_view(), name="hypervisor_list"),
    path("hypervisors/export.csv", views.HypervisorExportView.as_view(), name="hypervisor_export"),
    path("hypervisors/<uuid:uuid>/", views.HypervisorDetailView.as_view(), name="hypervisor_detail"),
    path("hypervisors/<uuid:uuid>/attach/", views.AttachView.as_view(), name="hypervisor_attach"),
    path("hypervisors/<uuid:uuid>/entitlements/<uuid:entitlement>/remove/",
         views.RemoveEntitlementView.as_view(kind="hypervisor"), name="hypervisor_remove"),
    path("systems/", views.SystemListView.as_view(), name="system_list"),
    path("systems/export.csv", views.SystemExportView.as_view(), name="system_export"),
    path("systems/<uuid:uuid>/", views.SystemDetailView.as_view(), name="system_detail"),
    path("systems/<uuid:uuid>/delete/", views.SystemDeleteView.as_view(), name="system_delete"),
    path("systems/<uuid:uuid>/resolve/", views.ResolveView.as_view(), name="system_resolve"),
    path("systems/<uuid:uuid>/entitlements/<uuid:entitlement>/remove/",
         views.RemoveEntitlementView.as_view(kind="system"), name="system_remove"),
    path("reports/", views.ReportListView.as_view(), name="report_list"),
    path("reports/<uuid:uuid>/", views.ReportDetailView.as_view(), name="report_detail"),
]
