"""Binding the listeners: a port that cannot be bound is a ConfigError naming its field, checked before anything
changes (proxy/http/server.py's `serve` checks both listeners first, then binds them)."""

from __future__ import annotations

import errno
import socket
import ssl

from aiohttp import web

from proxy.config.units import ConfigError


def check_free(host: str, port: int, field: str) -> None:
    """ConfigError naming `field` when (host, port) cannot be bound: in use, not allowed, not an address
    here. Checked before the proxy starts (adopting instances, joining a cluster), so a proxy that cannot
    listen changes nothing; binding itself is still checked (`listen`)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(field.replace("port", "host"), f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise _bind_error(host, port, field, exc) from None


def _bind_error(host: str, port: int, field: str, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(field, f"{port} on {host} is in use")
    if exc.errno == errno.EACCES:
        return ConfigError(field, f"{port} on {host}: permission denied (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(field.replace("port", "host"), f"{host} is not an address of this machine")
    return ConfigError(field, f"cannot listen on {host}:{port}: {exc.strerror or exc}")


async def listen(runner: web.BaseRunner, host: str, port: int, field: str,
                  tls: ssl.SSLContext | None = None) -> None:
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls).start()
    except OSError as exc:
        raise _bind_error(host, port, field, exc) from None
