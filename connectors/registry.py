"""Every upstream system privacy-ledger reads, one line each; the daemon loops over this."""

from __future__ import annotations

from connectors.mailchimp.system import SYSTEM as MAILCHIMP
from connectors.stripe.system import SYSTEM as STRIPE
from connectors.system import System
from connectors.woocommerce.system import SYSTEM as WOOCOMMERCE
from connectors.wordpress.system import SYSTEM as WORDPRESS

SYSTEMS: tuple[System, ...] = (WOOCOMMERCE, STRIPE, MAILCHIMP, WORDPRESS)


def system_for(kind: str) -> System | None:
    """The system of that kind (a connector's or source's `kind`)."""
    return next((system for system in SYSTEMS if system.kind == kind), None)
