"""The one rule for container keys: what a URL may name before it reaches any backend."""

from __future__ import annotations

import re

MAX_KEY_LENGTH = 63
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def validate_key(key: str) -> str | None:
    """None when `key` is safe, else the reason it is not (shown in the 400 body)."""
    if not key:
        return "key is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"key is longer than {MAX_KEY_LENGTH} characters"
    if ".." in key:
        return "key must not contain '..'"
    if not _KEY.match(key) or not key.isascii():
        return "key may contain only ASCII letters, digits, '_', '.', '-' and must start with a letter or digit"
    return None
