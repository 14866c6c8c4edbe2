"""Request targets, byte for byte: which route a raw path names, what the upstream receives, what is refused.

Both data paths (the fast Protocol path and the aiohttp path) use these rules, so a request target
is treated the same whichever path serves it:

- the upstream receives the client's target unchanged (no decoding, re-encoding or reordering),
  except that a route's `upstream_path` template replaces the matched prefix; the template's
  variables are filled with the *raw* (still percent-encoded) text the client sent;
- a path with a dot-segment in any spelling (`..`, `.`, `%2e%2E`, `..%2f`, `..\\`, double-encoded)
  is refused with 400: it could turn `/container/{id}/api/<tail>` into an upstream path outside
  `/api/` on an upstream that decodes or normalises.
"""

from __future__ import annotations

import re
from typing import Mapping
from urllib.parse import unquote

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_SEPARATORS = re.compile(r"[/\\]")
_DECODE_ROUNDS = 3  # `%25252e` is `.` after three decodings; no upstream decodes more often than that


def escape_reason(raw_path: str) -> str | None:
    """None when `raw_path` has no dot-segment in any encoding, else why it is refused (400)."""
    if "." not in raw_path and "%" not in raw_path and "\\" not in raw_path:
        return None  # the common case costs three scans of a short string
    text = raw_path
    for _ in range(_DECODE_ROUNDS + 1):
        if any(segment in (".", "..") for segment in _SEPARATORS.split(text)):
            return "path contains a dot-segment ('.' or '..', literal or percent-encoded)"
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return None
        text = decoded
    return "path is percent-encoded too many times"


def is_plain(raw_path: str) -> bool:
    """A path the router sees exactly as sent: no escapes, no dot-segments, no backslashes.

    For such a path aiohttp's decoded and normalised view equals the raw bytes, so the fast path may
    match routes on the raw text and still agree with the aiohttp router.
    """
    return "%" not in raw_path and "/." not in raw_path and "\\" not in raw_path


def fill(template: str, variables: Mapping[str, str]) -> str:
    """Substitute `{name}` placeholders (keys and upstream_path templates)."""
    if "{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), ""), template)


def upstream_target(template: str | None, raw_target: str, raw_variables: Mapping[str, str]) -> str:
    """What the upstream receives as request target: the raw target, or the template with raw values + query."""
    if template is None:
        return raw_target
    _, sep, query = raw_target.partition("?")
    return fill(template, raw_variables) + sep + query
