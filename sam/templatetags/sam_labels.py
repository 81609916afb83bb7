"""``{% pool_type key %}`` and ``{% reason key %}``: the human label, the key in small print
(subscriptions/labels.py holds the words)."""

from __future__ import annotations

from django import template
from django.utils.html import format_html

from subscriptions.labels import pool_type_label, reason_label

register = template.Library()


def _labelled(label: str, key: str):
    if not key:
        return ""
    if label == key:
        return format_html("<code>{}</code>", key)
    return format_html('{} <small class="key"><code>{}</code></small>', label, key)


@register.simple_tag
def pool_type(key: str):
    return _labelled(pool_type_label(key), key)


@register.simple_tag
def reason(key: str):
    return _labelled(reason_label(key), key)


@register.filter
def pool_type_text(key: str) -> str:
    """The label alone (for attributes and headings)."""
    return pool_type_label(key)
