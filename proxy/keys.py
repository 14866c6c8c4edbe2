"""The one rule for container keys: what a URL may name before it reaches any backend."""

from __future__ import annotations

import re

MAX_KEY_LENGTH = 63
# ASCII letters, digits, '_', '.', '-'; a letter or digit first; never '..' (every '.' is followed by another
# character or ends the key). No lookahead, so the OpenAPI document states it as is (`KEY_SCHEMA`).
KEY_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN}
_KEY = re.compile(KEY_PATTERN)
# Members of a `mode: lb` route's pool get keys no URL can produce (`lb#0`, `lb#1`, ...: `#` never reaches a
# path, and `validate_key` refuses it), so a per-key route can never address a balanced pool's instance.
POOL_SEPARATOR = "#"


def member_key(base_key: str, index: int) -> str:
    """The key of member `index` of the pool behind `base_key`."""
    return f"{base_key}{POOL_SEPARATOR}{index}"


def validate_key(key: str) -> str | None:
    """None when `key` is safe, else the reason it is not (shown in the 400 body)."""
    if not key:
        return "key is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"key is longer than {MAX_KEY_LENGTH} characters"
    if ".." in key:
        return "key must not contain '..'"
    if not _KEY.fullmatch(key):
        return "key may contain only ASCII letters, digits, '_', '.', '-' and must start with a letter or digit"
    return None
