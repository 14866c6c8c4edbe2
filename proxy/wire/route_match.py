"""What picks a route and its key besides the path: the Host, headers, cookies and the User-Agent.

Both data paths (the fast path and the aiohttp path) use these objects, so they choose the same route
and compute the same key for the same request, and config validation uses the same parsers, so nothing
that passes `--config` fails at start-up:

- `check_path`: a path pattern as aiohttp's own router parses it (a throwaway UrlDispatcher);
- `HostPattern`: `{id}.apps.example.com` (a variable is one DNS label), `*.example.com` (one or more
  labels) or a literal host; matched case-insensitively, the Host header's port ignored;
- `KeyTemplate`: a key made of literals, path/host variables, `{header:Name}` and `{cookie:name}`;
- `RouteGroup`: the routes that share one path, tried host routes first (config order), then the
  route without `host` (a Host matching no host route falls through to it, like nginx's default server);
- `agent_matcher`: `ignore_user_agents`, the User-Agents that never wake a cold instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlDispatcher
from multidict import CIMultiDictProxy

_KEY_TOKEN = re.compile(r"\{(?:(header|cookie):([^{}:]*)|([^{}]*))\}")
_NAME = re.compile(r"^[A-Za-z_]\w*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token (cookie names too)
_HOST_LABEL = re.compile(r"^[a-z0-9_-]+$")
_PATH_VARIABLE = re.compile(r"\{(\w+)(?::[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")


Headers = CIMultiDictProxy[str]  # aiohttp's `request.headers` and the fast path's parsed `message.headers`


# ---------------------------------------------------------------- path patterns


async def _nothing() -> None:
    """The throwaway router's handler; never called."""


def check_path(path: str) -> str | None:
    """None when aiohttp accepts `path` as a route pattern, else why not (in the user's words)."""
    try:
        UrlDispatcher().add_route("*", path, _nothing)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("Invalid path"):
            return "malformed pattern: unbalanced '{' or '}', or a variable name that is not an identifier"
        if (twice := re.search(r"redefinition of group name '(\w+)'", message)) is not None:
            return f"variable {{{twice.group(1)}}} is used twice"
        if message.startswith("Bad pattern"):
            return f"bad regular expression in a variable: {message.rpartition(': ')[2]}"
        return message
    return None


def path_variables(path: str) -> list[str]:
    return _PATH_VARIABLE.findall(path)


def path_signature(path: str) -> str:
    """The pattern with its variable names dropped: two paths with one signature match the same requests."""
    return _PATH_VARIABLE.sub(lambda m: "{" + m.group(0)[len(m.group(1)) + 1:], path)


# ---------------------------------------------------------------- hosts


def normalize_host(host: str | None) -> str:
    """The Host header as routes see it: lower case, without port or trailing dot (`[::1]:80` -> `[::1]`)."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


class HostPattern:
    """`{id}.apps.example.com`, `*.example.com` or `example.com`, compiled once."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.variables: list[str] = []
        labels = pattern.lower().rstrip(".").split(".")
        if not pattern or any(not label for label in labels):
            raise ValueError("expected a host name such as `{id}.apps.example.com` or `*.example.com`")
        parts = []
        for i, label in enumerate(labels):
            if label == "*":
                if i != 0:
                    raise ValueError("`*` may only be the first label (`*.example.com`)")
                parts.append(r"[^/:]+")  # one or more labels, as nginx's `*.example.com`
            elif label.startswith("{") and label.endswith("}"):
                name = label[1:-1]
                if not _NAME.match(name) or name in self.variables:
                    raise ValueError(f"{label} is not a variable name (or is used twice)")
                self.variables.append(name)
                parts.append(f"(?P<{name}>[^./:]+)")  # one label; the key it makes is validated per request
            elif _HOST_LABEL.match(label):
                parts.append(re.escape(label))
            else:
                raise ValueError(f"{label!r}: a label is a variable `{{name}}`, `*` (first label only) "
                                 "or letters, digits, '-' and '_'")
        self._regex = re.compile(r"\.".join(parts))
        self.literal = pattern.lower().rstrip(".") if not self.variables and "*" not in labels else None

    def match(self, host: str) -> dict[str, str] | None:
        """The host's variables when the (normalized) host matches, else None."""
        if self.literal is not None:
            return {} if host == self.literal else None
        found = self._regex.fullmatch(host)
        return None if found is None else found.groupdict()


# ---------------------------------------------------------------- keys


def cookie(headers: Headers, name: str) -> str | None:
    """The first cookie `name` in the Cookie header(s), as RFC 6265 browsers send them (`a=1; b=2`)."""
    for line in headers.getall("Cookie", ()):
        for pair in line.split(";"):
            found, sep, value = pair.partition("=")
            if sep and found.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


class KeyTemplate:
    """A route's `key`: literals and `{var}`, `{header:Name}`, `{cookie:name}` placeholders, parsed once."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.parts: list[tuple[str, str]] = []  # (kind, text): kind is "", "var", "header" or "cookie"
        at = 0
        for token in _KEY_TOKEN.finditer(template):
            if token.start() > at:
                self.parts.append(("", template[at:token.start()]))
            source, name, var = token.groups()
            if source is None:
                if not _NAME.match(var):
                    raise ValueError(f"{{{var}}} is not a placeholder: use {{name}}, {{header:Name}} "
                                     "or {cookie:name}")
                self.parts.append(("var", var))
            elif not _HEADER_NAME.match(name):
                raise ValueError(f"{{{source}:{name}}}: expected a {source} name")
            else:
                self.parts.append((source, name))
            at = token.end()
        if at < len(template):
            self.parts.append(("", template[at:]))
        if any("{" in text or "}" in text for kind, text in self.parts if not kind):
            raise ValueError("unbalanced '{' or '}'")
        self.variables = [text for kind, text in self.parts if kind == "var"]
        self.from_request = [(kind, text) for kind, text in self.parts if kind in ("header", "cookie")]

    def fill(self, variables: Mapping[str, str], headers: Headers | None = None) -> str:
        """The key; "" (an invalid key, see `missing`) when a header or cookie it is made of is missing or empty."""
        out = []
        for kind, text in self.parts:
            if not kind:
                out.append(text)
            elif kind == "var":
                out.append(variables.get(text, ""))
            else:
                value = None if headers is None else headers.get(text) if kind == "header" else cookie(headers, text)
                if not value:
                    return ""
                out.append(value)
        return "".join(out)

    def missing(self, headers: Headers) -> str | None:
        """Why the key cannot be made from this request (`missing header X-Tenant for the key`), if so."""
        for kind, name in self.from_request:
            if not (headers.get(name) if kind == "header" else cookie(headers, name)):
                return f"missing {kind} {name} for the key"
        return None


# ---------------------------------------------------------------- user agents


class AgentMatcher:
    """A route's `ignore_user_agents`: each regex searched in the User-Agent (each may carry its own `(?i)`)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [re.compile(p) for p in patterns]

    def search(self, agent: str) -> bool:
        return any(p.search(agent) for p in self.patterns)


def agent_matcher(patterns: Iterable[str]) -> AgentMatcher | None:
    """None when there is nothing to ignore (the request path then looks at no User-Agent)."""
    matcher = AgentMatcher(patterns)
    return matcher if matcher.patterns else None


# ---------------------------------------------------------------- one path, several hosts


class Hosted(Protocol):
    """What a RouteGroup needs of a route's handler (proxy/http/routes.py RouteHandler)."""

    host: HostPattern | None

    async def handle(self, request: web.Request) -> web.StreamResponse: ...

    async def expect(self, request: web.Request) -> web.StreamResponse | None: ...


H = TypeVar("H", bound=Hosted)


class RouteGroup(Generic[H]):
    """The routes (handlers) sharing one aiohttp resource: host routes in config order, then the host-less one."""

    def __init__(self, handlers: list[H]) -> None:
        self.hosted = [h for h in handlers if h.host is not None]
        fallback = [h for h in handlers if h.host is None]
        self.fallback: H | None = fallback[0] if fallback else None
        self.only: H | None = self.fallback if not self.hosted else None  # the common case: no host to look at

    def pick(self, host_header: str | None) -> tuple[H, dict[str, str]] | None:
        """The route for this Host and the host's variables; None when no route of this path takes it."""
        if self.only is not None:
            return self.only, {}
        host = normalize_host(host_header)
        for handler in self.hosted:
            assert handler.host is not None
            if (found := handler.host.match(host)) is not None:
                return handler, found
        return (self.fallback, {}) if self.fallback is not None else None

    def _chosen(self, request: web.Request) -> H:
        if (picked := self.pick(request.headers.get(hdrs.HOST))) is None:
            raise web.HTTPNotFound(text=f"no route for host {normalize_host(request.headers.get(hdrs.HOST))!r} "
                                        f"and path {request.path!r}")
        return picked[0]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of a path several hosts share: the chosen route's handler serves it."""
        return await self._chosen(request).handle(request)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        return await self._chosen(request).expect(request)
