"""Mounted twice, under /candlepin (standalone Candlepin) and /rhsm (Satellite)."""

from django.urls import re_path

from sam.candlepin import views

urlpatterns = [
    re_path(r"^$", views.root),
    re_path(r"^status/?$", views.status),
    re_path(r"^users/(?P<username>[^/]+)/owners/?$", views.user_owners),
    re_path(r"^owners/(?P<key>[^/]+)/hypervisors/?$", views.owner_hypervisors),
    re_path(r"^owners/(?P<key>[^/]+)/?$", views.owner),
    re_path(r"^hypervisors/(?P<owner_key>[^/]+)/heartbeat/?$", views.hypervisor_heartbeat),
    re_path(r"^hypervisors/(?P<owner_key>[^/]+)/?$", views.hypervisor_checkin),
    re_path(r"^hypervisors/?$", views.legacy_checkin),
    re_path(r"^jobs/(?P<job_id>[^/]*)/?$", views.job),
    re_path(r"^(?P<path>.*)$", views.not_found),
]
