"""`routes[]`: how a request finds its container class and key (part of proxy/config/schema.py's schema).

A route matches a path (aiohttp's pattern syntax, checked with aiohttp's own parser here so a config that loads
always starts), optionally a Host, and makes the key from path/host variables, headers and cookies
(proxy/wire/route_match.py holds the matching rules both data paths share).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from proxy.config.base import Section, field_error, none_means_default, shown
from proxy.wire.route_match import HostPattern, KeyTemplate, check_path, path_signature, path_variables
from proxy.config.units import Duration, NonEmptyStr, PositiveDuration, TupleOf, UrlPath, check_key

__all__ = ["Route", "WaitingPage", "check_distinct"]

WaitingTheme = Literal["calm", "console"]  # the themes shipped in proxy/face/templates/ (waiting-<theme>.html)


class WaitingPage(Section):
    """`waiting_page`: what a browser sees while its app starts (proxy/face/). `true` takes these defaults."""

    after: Duration = Field(default=0.3, ge=0, le=60, description="show the page only when the app is not ready "
                                                                    "after this long (no flash for fast starts)")
    theme: WaitingTheme = Field(default="calm", description="a shipped theme: `calm` or `console`")
    template: NonEmptyStr | None = Field(
        default=None, description="a Jinja2 template file of your own (autoescaped), instead of the theme's",
        json_schema_extra=shown("the theme's"))

    @field_validator("template")
    @classmethod
    def _readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A relative path is the config file's directory's (as compose's volumes)."""
        if value is None:
            return None
        base = Path((info.context or {}).get("base") or Path.cwd()) if isinstance(info.context, dict) else Path.cwd()
        path = base / Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"no such file: {value}")
        return str(path)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Route(Section):
    path: UrlPath = Field(description="aiohttp path pattern, e.g. `/container/{id}/api/{tail:.*}`")
    container: NonEmptyStr = Field(description="container class")
    host: NonEmptyStr | None = Field(
        default=None, description='match the Host too: `"{id}.apps.example.com"` (a variable is one label, usable '
                                  'in `key` and `upstream_path`), `"*.example.com"` or a literal host; any case, '
                                  'port ignored. A Host no route of this path matches falls through to the one '
                                  'without `host`', json_schema_extra=shown("any host"))
    key: str = Field(default="", description='fixed key or a template of path/host variables (`"{id}"`), headers '
                                             '(`"{header:X-Tenant}"`) and cookies (`"{cookie:session}"`); a missing '
                                             'header or cookie is a 400', json_schema_extra=shown("the class name"))
    mode: Literal["start", "warm", "lb"] = Field(
        default="start",
        description="`start` (start if needed), `warm` (only if running, else 503), `lb` (balance over `instances`)")
    upstream_path: NonEmptyStr | None = Field(
        default=None, description="template, e.g. `/api/{tail}` (strips a prefix); the query string is kept",
        json_schema_extra=shown("the request path"))
    instances: int = Field(
        default=1, ge=1, le=1000, description="lb only: pool size (keys `<key>-0` … `<key>-N-1`)")
    target_concurrency: float = Field(
        default=0.0, ge=0, le=10_000, description="lb only: autoscale the pool to this many requests in flight per "
                                                  "ready instance (`0`: off, a fixed pool of `instances`)")
    min_instances: int = Field(default=0, ge=0, le=1000,
                               description="autoscaled lb: instances kept running with no load")
    max_instances: int = Field(default=0, ge=0, le=1000, description="autoscaled lb: pool size at most (also "
                                                                     "bounded by the class's max_instances)",
                               json_schema_extra=shown("`instances`"))
    scale_window: PositiveDuration = Field(
        default=60.0, description="autoscaled lb: the stable window the average in-flight is taken over (scale "
                                  "down after it); the panic window, for bursts, is a tenth of it")
    name: str = Field(default="", description="`route` label in metrics", json_schema_extra=shown("the path"))
    waiting_page: WaitingPage | None = Field(
        default=None, description="browsers that open a sleeping app get a page that shows the start live, then "
                                  "the app: `true`, or `{after: 300ms, theme: calm, template: PATH}`",
        json_schema_extra=shown("false"))
    ignore_user_agents: TupleOf[str] = Field(
        default=(), description="regular expressions (searched in the User-Agent): a matching request never "
                                "starts an instance (served if running, else 503 `not warm`), so health checkers "
                                "and crawlers do not wake keys, e.g. `[\"kube-probe\", \"(?i)bot\"]`")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        data = none_means_default(data)
        if isinstance(data, dict):
            if isinstance(data.get("container"), str):
                data.setdefault("key", data["container"])
            if isinstance(data.get("path"), str) and not data.get("name"):
                data["name"] = data["path"]
            if isinstance(page := data.get("waiting_page"), bool):  # `true`: the defaults; `false`: none
                data["waiting_page"] = {} if page else None
        return data

    @model_validator(mode="after")
    def _templates(self) -> Route:
        if (problem := check_path(self.path)) is not None:
            raise field_error(("path",), problem)
        path_vars = set(path_variables(self.path))
        host_vars: set[str] = set()
        if self.host is not None:
            try:
                host_vars = set(HostPattern(self.host).variables)
            except ValueError as exc:
                raise field_error(("host",), str(exc)) from None
            if clash := sorted(host_vars & path_vars):
                raise field_error(("host",), f"{{{clash[0]}}} is a path variable too")
        try:
            template = KeyTemplate(self.key)
        except ValueError as exc:
            raise field_error(("key",), str(exc)) from None
        for field, names in (("key", template.variables), ("upstream_path", _PLACEHOLDER.findall(
                self.upstream_path or ""))):
            for var in names:
                if var not in path_vars | host_vars:
                    raise field_error((field,), f"placeholder {{{var}}} is not a variable of the path or host")
        if re.search(r"\{(header|cookie):", self.upstream_path or ""):
            raise field_error(("upstream_path",), "only `key` may use {header:...} and {cookie:...}")
        placeholders = template.variables or template.from_request
        if not placeholders:
            try:
                check_key(self.key)
            except ValueError as exc:
                raise field_error(("key",), str(exc)) from None
        for i, pattern in enumerate(self.ignore_user_agents):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise field_error(("ignore_user_agents", i), f"invalid regular expression: {exc}") from None
        if self.mode == "lb" and placeholders:
            raise field_error(("key",), "an lb route balances over fixed keys; templates are not allowed")
        if self.instances > 1 and self.mode != "lb":
            raise field_error(("instances",), "only lb routes run several instances")
        if self.target_concurrency and self.mode != "lb":
            raise field_error(("target_concurrency",), "only lb routes autoscale")
        if self.min_instances > self.pool_size:
            raise field_error(("min_instances",), "must be at most max_instances")
        return self

    @property
    def pool_size(self) -> int:
        """Pool members: `max_instances` of an autoscaled route (default `instances`), else `instances`."""
        return (self.max_instances or self.instances) if self.target_concurrency else self.instances


def check_distinct(routes: tuple[Route, ...]) -> None:
    """Two routes of one path need different hosts (else the second is never served), spelled alike."""
    seen: dict[tuple[str, str], int] = {}
    spelled: dict[str, str] = {}
    for i, route in enumerate(routes):
        signature = path_signature(route.path)
        host = route.host.lower().rstrip(".") if route.host else ""
        if (first := seen.setdefault((signature, host), i)) != i:
            raise field_error(("routes", i, "path"), f"duplicate of routes[{first}]"
                              + (f" (same host {route.host})" if route.host else ""))
        if spelled.setdefault(signature, route.path) != route.path:
            raise field_error(("routes", i, "path"), f"matches what {spelled[signature]!r} matches: routes of "
                                                     "one path (differing by host) must name its variables alike")
