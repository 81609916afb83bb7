"""Which virt-who reporters use which API token, for the confirmation shown before a
membership change revokes tokens (orgs.services.ConfirmationRequired).

A report records its ``principal`` (``token:<name>`` for a token; names are unique in an org,
revoked tokens included) and its ``reporter_id``, so the reporters seen with a token are read
from the org's reports; a token never used by a reporter is listed by its name.
"""

from __future__ import annotations

from hypervisors.models import Report
from orgs.models import ApiToken, Organization


def token_impact(org: Organization, tokens: list[ApiToken]) -> dict:
    """``{"tokens": [{id, name, role, reporter_ids}], "reporters": [...]}``: every token and the
    reporters that stop working with it (reporter ids seen with it, else the token's name)."""
    by_principal = {f"token:{t.name}": t for t in tokens}
    seen: dict[int, list[str]] = {t.pk: [] for t in tokens}
    rows = (Report.objects.filter(org=org, principal__in=list(by_principal)).exclude(reporter_id="")
            .values_list("principal", "reporter_id").distinct().order_by("principal", "reporter_id"))
    for principal, reporter_id in rows:
        seen[by_principal[principal].pk].append(reporter_id)
    reporters: list[str] = []
    for token in tokens:
        for name in seen[token.pk] or [token.name]:
            if name not in reporters:
                reporters.append(name)
    return {
        "tokens": [{"id": t.pk, "name": t.name, "role": t.role, "reporter_ids": seen[t.pk]}
                   for t in tokens],
        "reporters": reporters,
    }
