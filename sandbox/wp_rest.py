"""WordPress's REST layer as a client meets it, shared by the twins of WordPress itself and of
WooCommerce (whose API is built on it): the query as PHP parses it, the error envelope,
parameter validation messages, and the pagination headers. Every behaviour here was held
against a real WordPress 6.1 (tests/wordpress, the contract suite).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sandbox.server import Reply

# `name[]=a` and `name[0]=a` are arrays to PHP; `name[key]=a` a map.
_BRACKETS = re.compile(r"^([^\[\]]+)\[([^\[\]]*)\]$")


def php_params(query: dict[str, list[str]]) -> dict[str, Any]:
    """The query as PHP's $_GET sees it: the last of repeated names wins, `name[]` and
    `name[N]` collect a list, `name[key]` a dict."""
    params: dict[str, Any] = {}
    for name, values in query.items():
        bracketed = _BRACKETS.match(name)
        if bracketed is None:
            params[name] = values[-1]
            continue
        base, key = bracketed.groups()
        if key == "" or key.isdigit():
            existing = params.get(base)
            items = existing if isinstance(existing, list) else []
            params[base] = [*items, *values]
        else:
            existing = params.get(base)
            mapping = existing if isinstance(existing, dict) else {}
            params[base] = {**mapping, key: values[-1]}
    return params


def error(status: int, code: str, message: str, **data: Any) -> Reply:
    """WP_Error as the REST server sends it."""
    return Reply(status, {"code": code, "message": message, "data": {"status": status, **data}})


def invalid_params(problems: dict[str, tuple[str, str]]) -> Reply:
    """400 rest_invalid_param: {param: (detail code, message)}, all of one stage together."""
    names = ", ".join(problems)
    return error(400, "rest_invalid_param", f"Invalid parameter(s): {names}",
                 params={name: message for name, (_, message) in problems.items()},
                 details={name: {"code": code, "message": message,
                                 "data": {"param": name} if code == "rest_invalid_type"
                                 else None}
                          for name, (code, message) in problems.items()})


def not_allowed_context(what: str, authenticated: bool) -> Reply:
    """`context=edit` without the capability: 401 anonymous (a refused password included:
    bare core forgets why it was refused), 403 for a known user without the right."""
    status = 403 if authenticated else 401
    return error(status, "rest_forbidden_context",
                 f"Sorry, you are not allowed to edit {what}.")


def integer(params: dict[str, Any], name: str, default: int,
            problems: dict[str, tuple[str, str]], *, minimum: int = 1,
            maximum: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str) or not raw.strip().lstrip("-").isdigit():
        problems[name] = ("rest_invalid_type", f"{name} is not of type integer.")
        return default
    value = int(raw.strip())
    if maximum is not None and not minimum <= value <= maximum:
        problems[name] = ("rest_out_of_bounds", f"{name} must be between {minimum} "
                                                f"(inclusive) and {maximum} (inclusive)")
        return default
    if value < minimum:
        problems[name] = ("rest_out_of_bounds",
                          f"{name} must be greater than or equal to {minimum}")
        return default
    return value


def string(params: dict[str, Any], name: str, default: str,
           problems: dict[str, tuple[str, str]], *, choices: Sequence[str] | None = None) -> str:
    raw = params.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str):
        problems[name] = ("rest_invalid_type", f"{name} is not of type string.")
        return default
    if choices is not None and raw not in choices:
        listed = ", ".join(choices[:-1]) + f", and {choices[-1]}" if len(choices) > 1 \
            else choices[0]
        problems[name] = ("rest_not_in_enum", f"{name} is not one of {listed}.")
        return default
    return raw


def page_of(items: Sequence[Any], page: int, per_page: int, base_url: str,
            query: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    """One page and the headers WordPress sends with it: X-WP-Total, X-WP-TotalPages, and a
    Link with prev/next (prev clamped to the last page beyond the end) or, for a single page,
    the API root."""
    total = len(items)
    pages = math.ceil(total / per_page) if total else 0
    chosen = list(items[(page - 1) * per_page: page * per_page])
    headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
    links = []
    if page > 1 and pages:
        links.append(f'<{_page_url(base_url, query, min(page - 1, pages))}>; rel="prev"')
    if page < pages:
        links.append(f'<{_page_url(base_url, query, page + 1)}>; rel="next"')
    root = base_url.split("/wp-json/", 1)[0] + "/wp-json/"
    headers["Link"] = ", ".join(links) if links else f'<{root}>; rel="https://api.w.org/"'
    return chosen, headers


def _page_url(base_url: str, query: dict[str, Any], page: int) -> str:
    pairs = [(k, v) for k, v in query.items() if k != "page"] + [("page", str(page))]
    encoded = "&".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in pairs)
    return f"{base_url}?{encoded}"


def only_fields(item: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """`_fields=a,b`: the top-level keys asked for (nested paths are not honoured in 6.1)."""
    if not fields:
        return item
    wanted = {name.strip() for name in fields.split(",")}
    return {key: value for key, value in item.items() if key in wanted}


def basic_credentials(headers: dict[str, str]) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, or None."""
    value = headers.get("authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if colon else None
