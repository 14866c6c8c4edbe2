"""The listeners' TLS: a context per listener that terminates it, and its certificate watched for rotation.

proxy/http/server.py's `serve` asks this for `server.tls` (the proxied port) and `admin.tls`; the contexts and
the rotation are proxy/wire/tls.py's. A certificate file gone bad since the config loaded is a ConfigError
naming the field, as at load.
"""

from __future__ import annotations

import ssl

from proxy.config.units import ConfigError
from proxy.wire.tls import CertWatcher, TlsFileError, TlsFiles, server_context

__all__ = ["ADMIN_ALPN", "SERVED_ALPN", "TlsListeners"]

# What the proxied port offers by ALPN: h2 (proxy/http/h2server.py) and HTTP/1.1. The admin listener is
# aiohttp's alone: HTTP/1.1 whatever the proxied port speaks.
SERVED_ALPN: tuple[str, ...] = ("h2", "http/1.1")
ADMIN_ALPN = ("http/1.1",)


class TlsListeners:
    """`server.tls` and `admin.tls` (either may be None: that listener speaks plain HTTP)."""

    def __init__(self, tls: TlsFiles | None, admin_tls: TlsFiles | None) -> None:
        self.watchers = {field: CertWatcher(_context(field, files, alpn), files, field) for field, files, alpn in
                         (("server.tls", tls, SERVED_ALPN), ("admin.tls", admin_tls, ADMIN_ALPN)) if files is not None}

    def context(self, field: str) -> ssl.SSLContext | None:
        """The context of `server.tls` or `admin.tls`; None when that listener has no TLS."""
        return self.watchers[field].context if field in self.watchers else None

    def start(self) -> None:
        for watcher in self.watchers.values():
            watcher.start()

    async def stop(self) -> None:
        for watcher in self.watchers.values():
            await watcher.stop()


def _context(field: str, files: TlsFiles, alpn: tuple[str, ...]) -> ssl.SSLContext:
    try:
        return server_context(files, alpn)
    except TlsFileError as exc:
        raise ConfigError(f"{field}.{exc.field}", exc.reason) from None
