"""The start-up line: where the proxy listens, which backend and whether it answers, what it serves.

One line an operator reads to know the proxy came up as meant, e.g.
`lazy-proxy 0.1.0 (compiled, 20 modules) listening on http://127.0.0.1:8787 (admin http://127.0.0.1:8788),
backend docker ok, 1 class (web: nginx:alpine), 3 routes (/, /api/{tail}, /ws)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import structlog

from proxy import __version__
from proxy.compile import running
from proxy.config.schema import Config

if TYPE_CHECKING:
    from proxy.app import Proxy

log = structlog.get_logger("proxy")

SHOWN_ROUTES = 3  # more than this: the count only


def url(address: Any, scheme: str = "http") -> str:
    """`http://host:port` of a bound socket's address (IPv6 in brackets); `https` where TLS terminates."""
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def startup_line(config: Config, listen: Iterable[Any], admin: Iterable[Any], backend: str,
                 unreachable: str | None, cluster: dict[str, Any] | None = None) -> str:
    """The line; `unreachable` is the backend's ping failure (None: it answered)."""
    scheme, admin_scheme = ("https" if tls is not None else "http" for tls in (config.tls, config.admin.tls))
    where = ", ".join(url(a, scheme) for a in listen) or f"{scheme}://{config.host}:{config.port}"
    admin_urls = ", ".join(url(a, admin_scheme) for a in admin)
    line = f"lazy-proxy {__version__} ({running()}) listening on {where}"  # the build: compiled or pure Python
    line += f" (admin {admin_urls})" if admin_urls else ""
    line += f", backend {backend} " + ("ok" if unreachable is None else f"UNREACHABLE: {unreachable}")
    classes = ", ".join(f"{name}: {c.spec.image}" for name, c in config.containers.items())
    line += f", {plural(len(config.containers), 'class')} ({classes})"
    paths = [route.path for route in config.routes]
    line += f", {plural(len(paths), 'route')}" + (f" ({', '.join(paths)})" if 0 < len(paths) <= SHOWN_ROUTES else "")
    if cluster is not None:
        members = ", ".join(str(m) for m in cluster.get("members", ()))
        line += (f", cluster replica {cluster.get('replica')} {'joined' if cluster.get('joined') else 'not joined'}"
                 f" (members: {members or 'none yet'})")
    if unreachable is not None:
        line += "; starts fail and /ready answers 503 until it answers"
    return line


async def announce(proxy: Proxy, listen: Iterable[Any], admin: Iterable[Any]) -> None:
    """Log the start-up line: info when the backend answers, warning when it does not (the proxy keeps
    running: the daemon may come up later, and /ready says 503 meanwhile)."""
    unreachable = await proxy.backend_check.reason()
    cluster = proxy.node.status() if proxy.node is not None else None
    line = startup_line(proxy.config, listen, admin, proxy.backend.name, unreachable, cluster)
    (log.info if unreachable is None else log.warning)(line)
