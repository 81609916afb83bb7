"""Candlepin's JSON shapes for consumers (what subscription-manager reads: rhsm-wire.md 2, 3)."""

from __future__ import annotations

from orgs import consumers, content_access
from orgs.models import ConsumerIdentity, Organization, System
from sam.candlepin.http import JSON, timestamp


def owner_json(org: Organization, mode: str | None = None) -> JSON:
    """OwnerDTO; ``contentAccessMode`` is what this caller is shown (``mode``, Candlepin's
    word: ``entitlement`` / ``org_environment``), never sam's ``per_client``."""
    return {
        "id": str(org.pk), "key": org.key, "displayName": org.name,
        "contentAccessMode": mode or content_access.WIRE[content_access.mode_for(org, False)],
        "contentAccessModeList": "entitlement,org_environment",
        "autobindDisabled": not org.autobind_enabled,
        "autobindHypervisorDisabled": not org.hypervisor_autobind_enabled,
        "created": timestamp(org.created), "updated": timestamp(org.updated),
        "href": f"/owners/{org.key}",
    }


def id_cert_json(identity: ConsumerIdentity) -> JSON:
    serial = consumers.serial_entry(identity)
    serial.update({"created": timestamp(identity.updated), "updated": timestamp(identity.updated)})
    return {
        "id": str(identity.serial), "key": consumers.key_pem(identity), "cert": identity.cert_pem,
        "serial": serial, "created": timestamp(identity.updated),
        "updated": timestamp(identity.updated),
    }


STATUS_COLOUR = {"valid": "green", "partial": "yellow", "invalid": "red", "disabled": "gray"}


def installed_json(system: System, compliance: JSON | None) -> list[JSON]:
    """Installed products with their status colour and the dates they are covered between
    (``list --installed`` prints them as Starts/Ends: the compliance's date ranges)."""
    compliance = compliance or {}
    ranges = compliance.get("productComplianceDateRanges") or {}
    result = []
    for product in system.installed_products:
        pid = str(product.get("productId"))
        if compliance.get("status") == "disabled":  # SCA: no per-product status
            status = "gray"
        elif pid in compliance.get("compliantProducts", {}):
            status = "green"
        elif pid in compliance.get("partiallyCompliantProducts", {}):
            status = "yellow"
        else:
            status = "red"
        result.append({"productId": pid, "productName": product.get("productName", ""),
                       "version": product.get("version", ""), "arch": product.get("arch", ""),
                       "status": status, "startDate": ranges.get(pid, {}).get("startDate"),
                       "endDate": ranges.get(pid, {}).get("endDate")})
    return result


def consumer_json(system: System, identity: ConsumerIdentity | None, compliance: JSON | None,
                  entitlement_count: int = 0) -> JSON:
    """ConsumerDTO: with ``idCert`` (certificate and key) when the system has an identity."""
    org = system.org
    release = identity.release_ver if identity else ""
    status = (compliance or {}).get("status", "invalid")
    return {
        "id": str(system.pk), "uuid": str(system.uuid), "name": system.name,
        "username": identity.registered_by if identity else None,
        "entitlementStatus": status,
        "serviceLevel": identity.service_level if identity else "",
        "role": identity.role if identity else "",
        "usage": identity.usage if identity else "",
        "addOns": identity.addons if identity else [],
        "systemPurposeStatus": "not specified",
        "releaseVer": {"releaseVer": release or None},
        "owner": {"id": str(org.pk), "key": org.key, "displayName": org.name,
                  "href": f"/owners/{org.key}",
                  "contentAccessMode": content_access.wire_mode(system)},
        "environment": None, "environments": None,
        "entitlementCount": entitlement_count,
        "facts": system.facts,
        "lastCheckin": timestamp(system.last_checkin),
        "installedProducts": installed_json(system, compliance),
        "canActivate": False, "capabilities": [],
        "hypervisorId": ({"hypervisorId": system.hypervisor_id, "reporterId": system.reporter_id}
                         if system.type == System.Type.HYPERVISOR and system.hypervisor_id else None),
        "contentTags": identity.content_tags if identity else [],
        "autoheal": system.autoheal,
        "annotations": None, "contentAccessMode": None,
        "type": {"id": None, "label": system.type, "manifest": False},
        "idCert": id_cert_json(identity) if identity else None,
        "guestIds": [],
        "href": f"/consumers/{system.uuid}",
        "created": timestamp(system.registered_at), "updated": timestamp(system.updated),
    }
