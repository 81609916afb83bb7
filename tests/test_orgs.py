"""Organizations and member roles (django-guardian object permissions on the org)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orgs import services as orgs
from orgs.models import Organization, OrganizationUserPermission
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_create_org_with_defaults():
    org = orgs.create_org("ACME", "ACME Corp")
    assert org.autobind_enabled and org.hypervisor_autobind_enabled
    assert org.unmapped_window == timedelta(hours=24)
    assert org.unmapped_lifetime == timedelta(days=7)
    assert org.content_access_mode == Organization.ContentAccess.ENTITLEMENT


def test_roles_grant_exactly_their_permissions():
    org = orgs.create_org("ACME", "ACME Corp")
    other = orgs.create_org("OTHER", "Other")
    ann = orgs.set_member_role(org, "ann", "admin", password="a-long-password-1")
    vic = orgs.set_member_role(org, "vic", "viewer")
    rep = orgs.set_member_role(org, "virt-who", "reporter")
    assert ann.check_password("a-long-password-1") and not vic.has_usable_password()
    assert ann.has_perm("orgs.admin_org", org) and ann.has_perm("orgs.checkin_org", org)
    assert vic.has_perm("orgs.view_org", org) and not vic.has_perm("orgs.admin_org", org)
    assert rep.has_perm("orgs.checkin_org", org) and not rep.has_perm("orgs.view_org", org)
    assert not ann.has_perm("orgs.view_org", other)
    assert [o.key for o in orgs.orgs_for_user(ann)] == ["ACME"]
    assert list(orgs.orgs_for_user(rep)) == []
    assert [o.key for o in orgs.orgs_for_user(rep, "checkin_org")] == ["ACME"]
    assert orgs.members(org) == [("ann", "admin"), ("vic", "viewer"), ("virt-who", "reporter")]


def test_changing_a_role_replaces_it():
    org = orgs.create_org("ACME", "ACME Corp")
    user = orgs.set_member_role(org, "ann", "admin")
    orgs.set_member_role(org, "ann", "viewer")
    assert orgs.member_role(org, user) == "viewer"
    assert set(OrganizationUserPermission.objects.filter(user=user)
               .values_list("permission__codename", flat=True)) == {"view_org"}
    orgs.remove_member(org, "ann")
    assert orgs.member_role(org, user) is None


def test_staff_see_every_org_and_anonymous_none():
    orgs.create_org("ACME", "ACME Corp")
    staff = UserFactory(is_staff=True)
    assert [o.key for o in orgs.orgs_for_user(staff)] == ["ACME"]
    from django.contrib.auth.models import AnonymousUser

    assert list(orgs.orgs_for_user(AnonymousUser())) == []


def test_update_org_settings():
    org = orgs.create_org("ACME", "ACME Corp")
    orgs.update_org(org, unmapped_window=timedelta(hours=72), content_access_mode="sca")
    org.refresh_from_db()
    assert org.unmapped_window == timedelta(hours=72)
    with pytest.raises(Exception, match="content_access_mode must be one of"):
        orgs.update_org(org, content_access_mode="bogus")
    with pytest.raises(Exception, match="Unknown organization settings"):
        orgs.update_org(org, colour="red")
