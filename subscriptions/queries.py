"""Querysets the subscription pages of the web UI and the REST API share (architecture.md habit
15: one definition, neither imports the other)."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from subscriptions.models import Pool, Product, Subscription


def products() -> QuerySet[Product]:
    """Products with their derived product and provided products loaded."""
    return Product.objects.select_related("derived_product").prefetch_related("provided_products")


def subscriptions() -> QuerySet[Subscription]:
    """Subscriptions with their primary pools prefetched (``primary_pools``) and their derived
    pools counted (``derived_pool_count``)."""
    return (
        Subscription.objects.select_related("product", "derived_product")
        .prefetch_related(Prefetch("pools", to_attr="primary_pools",
                                   queryset=Pool.objects.filter(requires_host__isnull=True).order_by("type")))
        .annotate(derived_pool_count=Count("pools", filter=Q(pools__requires_host__isnull=False)))
    )
