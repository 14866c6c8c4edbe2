"""Which requests are a person's browser opening a page: only those get a waiting page.

A navigation is a GET whose `Accept` prefers HTML over anything else it names, that is not a fetch/XHR
(`Sec-Fetch-Mode`/`Sec-Fetch-Dest`, sent by every current browser, must say `navigate`/`document` when present;
`X-Requested-With` marks old XHR libraries) and not an upgrade. curl (`*/*`), API clients and scripts are not:
they keep being held until the app is ready, as before.
"""

from __future__ import annotations

from typing import Mapping

HTML = frozenset({"text/html", "application/xhtml+xml"})


def is_navigation(method: str, headers: Mapping[str, str]) -> bool:
    if method != "GET" or "Upgrade" in headers or "X-Requested-With" in headers:
        return False
    mode, dest = headers.get("Sec-Fetch-Mode"), headers.get("Sec-Fetch-Dest")
    if mode is not None and mode.strip().lower() != "navigate":
        return False
    if dest is not None and dest.strip().lower() != "document":  # an iframe: the page may not be framed
        return False
    return prefers_html(headers.get("Accept", ""))


def prefers_html(accept: str) -> bool:
    """HTML is named with a weight above 0 and no other named (non-wildcard) type weighs more."""
    html, other = 0.0, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media in HTML:
            html = max(html, weight)
        elif media and not media.endswith("/*"):
            other = max(other, weight)
    return html > 0 and html >= other
