"""Which findings `privacy-ledger fix` can fix, and the commands the email and the audit
print for them (shared by daemon/fix.py and daemon/report.py, which may not import the
connectors fix.py uses)."""

from __future__ import annotations

import re
import shlex

from vocabulary import (
    COMMENT,
    CUSTOMER,
    MAILCHIMP,
    MEMBER,
    ORDER,
    STRIPE,
    USER,
    WOOCOMMERCE,
    WORDPRESS,
)

# Ids and source names as the upstreams make them: anything else gets no per-finding command
# (an id that had to be cut or escaped would name another record or none).
_PLAIN = re.compile(r"[A-Za-z0-9_.:@+-]{1,100}")

DELETE, ANONYMISE, CLEAR_NOTE = "delete", "anonymise", "clear-note"

# (rule, system, record type) → the write that fixes the finding.
ACTIONS: dict[tuple[str, str, str], str] = {
    ("inactive-account", WOOCOMMERCE, CUSTOMER): DELETE,
    ("order-past-retention", WOOCOMMERCE, ORDER): ANONYMISE,
    ("unpaid-order-past-retention", WOOCOMMERCE, ORDER): DELETE,
    ("processor-copy-orphaned", STRIPE, CUSTOMER): DELETE,
    ("processor-copy-orphaned", MAILCHIMP, MEMBER): DELETE,
    ("stripe-customer-inactive", STRIPE, CUSTOMER): DELETE,
    ("mailchimp-contact-retained", MAILCHIMP, MEMBER): DELETE,
    ("card-number-exposed", WOOCOMMERCE, ORDER): CLEAR_NOTE,
    ("comment-kept-in-spam-or-trash", WORDPRESS, COMMENT): DELETE,
    ("inactive-site-account", WORDPRESS, USER): DELETE,
}
FIXABLE_RULES = frozenset(rule for rule, _, _ in ACTIONS)


def fix_all_command(rule: str) -> str | None:
    """The one command that fixes every finding of the rule (None: nothing to run)."""
    return f"privacy-ledger fix --rule {rule}" if rule in FIXABLE_RULES else None


def fix_command(rule: str, source: str | None, external_id: str | None) -> str | None:
    """The command that fixes one finding (None: the rule has no fix)."""
    if rule not in FIXABLE_RULES or not source or not external_id:
        return None
    if not (_PLAIN.fullmatch(source) and _PLAIN.fullmatch(external_id)):
        return None
    return "privacy-ledger fix " + " ".join(shlex.quote(p) for p in (rule, source, external_id))
