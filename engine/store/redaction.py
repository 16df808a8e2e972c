"""The one way a URL is shown to people: in errors, tables and logs.

URLs carry secrets in several places. Hosted RPC providers put the API key in the path or the
query (`https://eth-sepolia.g.alchemy.com/v2/KEY`), database URLs put a password in the
userinfo (`postgresql://app:PASSWORD@db/settle`), and either may carry a token as a query
parameter. One function decides what is safe, so a new message cannot leak by using another
rule; it lives in the store, the lowest layer that holds a URL (the database's), so the chain,
deploy, tools and CLI layers can all reach it.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

# Schemes whose path names a database (a file or a database name): the path is what a user
# needs to see to fix a typo, and it holds no secret.
_DATABASE_SCHEMES: Final = frozenset({"sqlite", "postgresql", "postgres"})
HIDDEN: Final = "…"


def redact_url(url: str) -> str:
    """`url` without anything that may be a secret: no password, no query, and, unless it
    names a database, no path (`https://rpc.example.org/…`, `postgresql://app@db:5432/settle`).
    """
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number
        return "the configured URL (unparseable)"
    if not parts.scheme or not (parts.hostname or parts.path):
        return "the configured URL (unparseable)"
    user = f"{parts.username}@" if parts.username else ""
    query = f"?{HIDDEN}" if parts.query else ""
    host = f"{user}{parts.hostname or ''}{port}"
    if parts.scheme.split("+")[0] in _DATABASE_SCHEMES:
        return f"{parts.scheme}://{host}{parts.path}{query}"
    hidden = f"/{HIDDEN}" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{hidden}"
