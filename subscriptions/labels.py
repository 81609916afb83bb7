"""Human labels for the stable keys the UI shows: pool types and reason keys.

The one place these words live: templates use the ``{% pool_type %}`` and ``{% reason %}`` tags
(``sam/templatetags/sam_labels.py``), which show the label with the key in small print (the key
is what the API, logs and clients say, so it stays findable). An unknown key shows as itself.
"""

from __future__ import annotations

from subscriptions.engine import REFUSALS
from subscriptions.models import Pool

POOL_TYPES = {
    Pool.Type.NORMAL: "Subscription pool",
    Pool.Type.UNMAPPED_GUEST: "Temporary pool",  # guests whose host is not known yet
    Pool.Type.ENTITLEMENT_DERIVED: "Host-derived pool",  # a host's guests inherit it
    Pool.Type.STACK_DERIVED: "Stack-derived pool",
    Pool.Type.BONUS: "Bonus pool",
}

# Compliance reason keys (Candlepin's) and explanation keys, besides the refusal keys.
_OTHER_REASONS = {
    "NOTCOVERED": "Not covered",
    "SOCKETS": "Too few sockets covered",
    "UNMAPPEDGUEST": "Temporary coverage (host not reported yet)",
    "no_host_subscription": "Host has no subscription for guests",
    "host_not_entitled": "Host not given its subscription",
    "autoheal_disabled": "Auto-attach is off",
    "not_covered": "Not covered yet",
    "no_subscription": "No subscription provides it",
}
REASONS = {**{key: text[:1].upper() + text[1:] for key, text in REFUSALS.items()},
           **_OTHER_REASONS}


def pool_type_label(pool_type: str) -> str:
    return POOL_TYPES.get(pool_type, pool_type)


def reason_label(key: str) -> str:
    return REASONS.get(key, key)
