"""Twins filled from the estate: the one place where sandbox.estate's people meet the twins.
The twins' own modules answer their API and know nothing of people or plants; each system's
module here (woocommerce, stripe, mailchimp, wordpress) turns the people into that system's records.
"""

from __future__ import annotations

from sandbox.estate import Estate, EstateSpec, Planted, make_people
from sandbox.seed import mailchimp, stripe, woocommerce, wordpress


def build_estate(spec: EstateSpec | None = None) -> Estate:
    """Every twin of the estate, seeded from the same people."""
    spec = spec or EstateSpec()
    people = make_people(spec)
    planted: list[Planted] = []
    shops = {shop: woocommerce.seeded(spec, people, planted, shop=shop) for shop in spec.shops}
    return Estate(spec=spec, people=people, shops=shops,
                  stripe=stripe.seeded(spec, people, planted),
                  mailchimp=mailchimp.seeded(spec, people, planted),
                  planted=planted,
                  sites={site: wordpress.seeded(spec, people, planted, site=site)
                         for site in spec.sites})
