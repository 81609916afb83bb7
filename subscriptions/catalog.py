"""What the engine reads, loaded from the database: the org's product catalog as plain data, and
a system's entitlements with the related rows the rules look at (``subscriptions.engine`` runs
no queries, so everything it needs is loaded here, in a fixed number of queries)."""

from __future__ import annotations

from orgs.models import Organization, System
from subscriptions import engine
from subscriptions.models import Entitlement, Product

# What the engine reads of an entitlement, loaded with it.
ENTITLEMENT_RELATED = ("system", "pool__product", "pool__subscription__product",
                       "pool__subscription__derived_product", "pool__requires_host")


def entitlements_of(system: System) -> list[Entitlement]:
    return list(Entitlement.objects.filter(system=system).select_related(*ENTITLEMENT_RELATED)
                .order_by("created", "id"))


class LoadedCatalog(engine.Catalog):
    """The engine's catalog plus the product rows it was made from (``by_id``, with their
    provided products loaded), for callers that write what a product is (certificates)."""

    def __init__(self, products: list[Product]) -> None:
        super().__init__(
            engine.CatalogProduct(product.id, product.sku, product.name,
                                  frozenset(p.sku for p in product.provided_products.all()))
            for product in products)
        self.by_id: dict[int, Product] = {product.id: product for product in products}


def load_catalog(org: Organization) -> LoadedCatalog:
    """The org's products and what each provides (two queries)."""
    return LoadedCatalog(list(Product.objects.filter(org=org).prefetch_related("provided_products")))
