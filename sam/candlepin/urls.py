"""Mounted three times: /candlepin (standalone Candlepin), /rhsm (Satellite), /subscription
(RHEL's default prefix)."""

from django.urls import re_path

from sam.candlepin import activation_keys, consumers, entitlements, imports, views

CONSUMER = r"^consumers/(?P<uuid>[^/]+)"

urlpatterns = [
    re_path(r"^$", views.root),
    re_path(r"^status/?$", views.status),
    re_path(r"^users/(?P<username>[^/]+)/owners/?$", views.user_owners),
    re_path(r"^owners/(?P<key>[^/]+)/hypervisors/?$", views.owner_hypervisors),
    re_path(r"^owners/(?P<key>[^/]+)/imports/async/?$", imports.import_async),
    re_path(r"^owners/(?P<key>[^/]+)/imports/?$", imports.imports),
    re_path(r"^owners/(?P<key>[^/]+)/activation_keys/?$", activation_keys.owner_keys),
    re_path(r"^activation_keys/(?P<key_id>[^/]+)/pool/(?P<pool_id>[^/]+)/?$",
            activation_keys.key_pool),
    re_path(r"^activation_keys/(?P<key_id>[^/]+)/?$", activation_keys.key_detail),
    re_path(r"^owners/(?P<key>[^/]+)/pools/?$", entitlements.owner_pools),
    re_path(r"^owners/(?P<key>[^/]+)/?$", views.owner),
    re_path(r"^hypervisors/(?P<owner_key>[^/]+)/heartbeat/?$", views.hypervisor_heartbeat),
    re_path(r"^hypervisors/(?P<owner_key>[^/]+)/?$", views.hypervisor_checkin),
    re_path(r"^hypervisors/?$", views.legacy_checkin),
    re_path(r"^jobs/(?P<job_id>[^/]*)/?$", views.job),
    re_path(r"^consumers/?$", consumers.register),
    re_path(CONSUMER + r"/?$", consumers.consumer),
    re_path(CONSUMER + r"/owner/?$", consumers.owner),
    re_path(CONSUMER + r"/compliance/?$", consumers.compliance_view),
    re_path(CONSUMER + r"/purpose_compliance/?$", consumers.purpose_compliance),
    re_path(CONSUMER + r"/content_overrides/?$", consumers.content_overrides),
    re_path(CONSUMER + r"/release/?$", consumers.release),
    re_path(CONSUMER + r"/accessible_content/?$", consumers.accessible_content),
    re_path(CONSUMER + r"/certificates/serials/?$", entitlements.certificate_serials),
    re_path(CONSUMER + r"/certificates/?$", entitlements.certificates),
    re_path(CONSUMER + r"/certificates/(?P<serial>[^/]+)/?$", entitlements.certificate),
    re_path(CONSUMER + r"/entitlements/?$", entitlements.entitlements),
    re_path(CONSUMER + r"/entitlements/pool/(?P<pool_id>[^/]+)/?$", entitlements.entitlements_of_pool),
    re_path(CONSUMER + r"/entitlements/(?P<entitlement_id>[^/]+)/?$", entitlements.entitlement),
    re_path(r"^(?P<path>.*)$", views.not_found),
]
