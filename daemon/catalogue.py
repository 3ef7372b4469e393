"""The shipped catalogue of WordPress plugins that send personal data to a processor
(daemon/data/plugins.toml), and the processors each configured system is: read by the config
(to know the processors a [policy] may name) and by the promise rules."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from vocabulary import SYSTEM_NAMES, Category

# Who receives what each configured system holds: a shop's data is held by its WordPress.
SYSTEM_PROCESSORS = {named.kind: named.processor for named in SYSTEM_NAMES}
# The catalogue's word for a plugin that sends nothing off the site.
NO_PROCESSOR = "none"


@dataclass(frozen=True)
class PluginEntry:
    """One catalogued plugin: its directory (the slug), what it sends to whom, and the
    plugin's own documentation that says so."""

    slug: str
    name: str
    processor: str
    country: str
    categories: tuple[str, ...]
    source: str


class CatalogueError(Exception):
    """The shipped catalogue is malformed; the message names the entry."""


@cache
def plugins() -> dict[str, PluginEntry]:
    """Every catalogued plugin by slug."""
    text = resources.files("daemon").joinpath("data/plugins.toml").read_text(encoding="utf-8")
    known = {str(c) for c in Category}
    entries = {}
    for slug, raw in tomllib.loads(text).items():
        unknown = [c for c in raw.get("categories", []) if c not in known]
        if unknown or not raw.get("source") or not raw.get("processor"):
            raise CatalogueError(f"daemon/data/plugins.toml [{slug}]: needs processor, source "
                                 f"and known categories (unknown: {', '.join(unknown)})")
        entries[slug] = PluginEntry(slug, raw.get("name", slug), raw["processor"],
                                    raw.get("country", ""), tuple(raw.get("categories", [])),
                                    raw["source"])
    return entries


def slug_of(plugin_path: str) -> str:
    """`facebook-for-woocommerce/facebook-for-woocommerce.php` → `facebook-for-woocommerce`
    (a single-file plugin, `hello.php`, is its own slug without .php)."""
    head = plugin_path.split("/", 1)[0]
    return head.removesuffix(".php")


def known_processors() -> list[str]:
    """The processors a [policy] may name: the systems' and the catalogue's."""
    names = set(SYSTEM_PROCESSORS.values())
    names.update(e.processor for e in plugins().values() if e.processor != NO_PROCESSOR)
    return sorted(names)
