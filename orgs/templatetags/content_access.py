"""``{{ system|content_access:org }}``: the content access mode a system is shown, for pages
that list one org's systems (the org passed in, so no query per row)."""

from django import template

from orgs import content_access as modes

register = template.Library()


@register.filter(name="content_access")
def content_access(system, org) -> str:
    return modes.mode_for(org, system.client_requires_sca)


@register.filter(name="content_access_label")
def content_access_label(mode: str) -> str:
    return modes.LABELS.get(mode, mode)
