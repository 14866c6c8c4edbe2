"""HTML through Jinja2 with autoescaping, and the headers every page of the face is sent with.

Pages carry their CSS and JS inline, allowed by a per-response nonce in a strict Content-Security-Policy:
nothing else runs or loads (no outside asset, no inline handler, no frame), so a key or path that reaches a
page as text can never become markup or script.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, Template, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")


@lru_cache(maxsize=None)
def _environment(extra_dir: str | None) -> Environment:
    loaders: list[Any] = [PackageLoader("proxy.face", "templates")]
    if extra_dir is not None:
        loaders.insert(0, FileSystemLoader(extra_dir))
    escape = select_autoescape(default=True, default_for_string=True)  # every template, whatever its name
    return Environment(loader=ChoiceLoader(loaders), autoescape=escape, auto_reload=False, trim_blocks=True,
                       lstrip_blocks=True)


def template(name: str, path: str | None = None) -> Template:
    """A shipped template by name, or a custom one by file path (it may extend or include the shipped ones)."""
    if path is None:
        return _environment(None).get_template(name)
    file = Path(path)
    return _environment(str(file.parent)).get_template(file.name)


def nonce() -> str:
    return secrets.token_urlsafe(16)


def page_headers(nonce_value: str, *, connect: bool = True) -> dict[str, str]:
    """Headers of an HTML page of the face: never cached, never framed, nothing loaded from elsewhere."""
    source = "'self'" if connect else "'none'"
    policy = (f"default-src 'none'; style-src 'nonce-{nonce_value}'; script-src 'nonce-{nonce_value}'; "
              f"connect-src {source}; img-src data:; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
            "Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def render(name: str, context: dict[str, Any], path: str | None = None) -> tuple[str, dict[str, str]]:
    """The page's HTML and its headers (a fresh nonce each time)."""
    value = nonce()
    return template(name, path).render(nonce=value, **context), page_headers(value)
