"""TLS termination: the listeners' `ssl.SSLContext`, and certificate rotation without a restart.

`server_context` builds the context a listener terminates TLS with: ALPN offers `h2` and `http/1.1` (the
HTTP/2 server picks its protocol per connection from `selected_alpn_protocol()`), the oldest protocol
version accepted is `min_version`, and a `client_ca` turns on mutual TLS (a client without a certificate
that CA signed fails the handshake). `CertWatcher` re-reads the certificate and key into that SAME context
when their files change, as certbot or cert-manager replace them: handshakes after the reload present the
new certificate, connections already open keep theirs. A half-written pair (the key replaced, the
certificate not yet) fails to load and is tried again on the next tick; the old certificate stays meanwhile.

`check_files` names the file at fault (`cert`, `key`, `client_ca`) so config errors point at the field.
Only the certificate and key are reloaded: a changed `client_ca` takes a restart (OpenSSL cannot drop a CA
from a live context's store).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Literal, Protocol, Sequence

import structlog

__all__ = ["ALPN", "CertWatcher", "TlsFiles", "TlsFileError", "check_files", "server_context"]

log = structlog.get_logger("proxy.tls")
ALPN = ("h2", "http/1.1")
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
WATCH_EVERY = 1.0  # seconds between two looks at the files (a stat each: nothing worth measuring)


class TlsFiles(Protocol):
    """What a listener's TLS needs (proxy/config/tls.py's `TlsConfig` is one); paths are absolute."""

    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def min_version(self) -> Literal["1.2", "1.3"]: ...
    @property
    def client_ca(self) -> str | None: ...


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot serve; `field` is `cert`, `key` or `client_ca`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _no_password() -> bytes:
    raise TlsFileError("key", "is encrypted (a key with a passphrase is not supported: decrypt it)")


def _readable(field: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsFileError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def _certificates(field: str, path: str) -> None:
    """The file holds at least one PEM certificate that parses."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError(field, f"{path} holds no valid PEM certificate ({_words(exc)})") from None


def _words(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).lower().replace("_", " ") or type(exc).__name__


def _load_chain(context: ssl.SSLContext, tls: TlsFiles) -> None:
    try:
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except ssl.SSLError as exc:
        raise TlsFileError("key", f"{tls.key} is not a PEM private key of the certificate in {tls.cert} "
                                  f"({_words(exc)})") from None


def check_files(tls: TlsFiles) -> None:
    """Raise TlsFileError naming the field whose file cannot serve (missing, unreadable, not PEM, key not
    the certificate's)."""
    server_context(tls)


def server_context(tls: TlsFiles, alpn: Sequence[str] = ALPN) -> ssl.SSLContext:
    """A server-side context for one listener; TlsFileError names the file at fault. `alpn`: the
    protocols offered, most preferred first."""
    for field, path in (("cert", tls.cert), ("key", tls.key), ("client_ca", tls.client_ca)):
        if path is not None:
            _readable(field, path)
    _certificates("cert", tls.cert)
    if tls.client_ca is not None:
        _certificates("client_ca", tls.client_ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[tls.min_version]
    context.set_alpn_protocols(list(alpn))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, tls)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is rewritten or replaced (mtime, size, inode); None while one is missing."""
    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (os.stat(p) for p in paths))
    except OSError:
        return None


class CertWatcher:
    """Reloads `tls`'s certificate and key into `context` when the files change (polled every `interval`)."""

    def __init__(self, context: ssl.SSLContext, tls: TlsFiles, field: str = "server.tls",
                 interval: float = WATCH_EVERY) -> None:
        self.context = context
        self.tls = tls
        self.field = field
        self.interval = interval
        self.reloads = 0
        self._paths = (tls.cert, tls.key)
        self._loaded = _signature(self._paths)
        self._failed: tuple[tuple[int, int, int], ...] | None = None  # the pair that failed, logged once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"cert-watch {self.field}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when a new certificate was loaded."""
        now = _signature(self._paths)
        if now is None or now == self._loaded:
            return False
        try:
            _certificates("cert", self.tls.cert)
            _load_chain(self.context, self.tls)
        except TlsFileError as exc:
            if now != self._failed:
                self._failed = now
                log.warning("tls_reload_failed", field=f"{self.field}.{exc.field}", reason=exc.reason,
                            keeping="the certificate loaded before")
            return False
        self._loaded, self._failed = now, None
        self.reloads += 1
        log.info("tls_reloaded", field=self.field, cert=self.tls.cert)
        return True
