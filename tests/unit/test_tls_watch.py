"""proxy/wire/tls.py on its own: the context's settings, and what the rotation watcher loads and refuses."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import trustme

from proxy.wire.tls import CertWatcher, TlsFileError, server_context


@dataclass(frozen=True)
class Files:
    cert: str
    key: str
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca: str | None = None


def pair(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path]:
    issued = ca.issue_cert("localhost")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def serial(context: ssl.SSLContext, ca: trustme.CA) -> str:
    """The serial number a client sees in a handshake with `context` (in memory, no socket)."""
    client = ssl.create_default_context()
    ca.configure_trust(client)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    near = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    far = context.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(10):
        for side in (near, far):
            try:
                side.do_handshake()
                done.add(id(side))
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if id(near) in done:
            break
    cert = near.getpeercert()
    assert cert is not None
    return str(cert["serialNumber"])


def test_the_context_offers_alpn_and_asks_for_client_certificates(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = pair(ca, tmp_path, "a")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = server_context(Files(str(cert), str(key), "1.3", str(tmp_path / "ca.pem")))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_REQUIRED
    plain = server_context(Files(str(cert), str(key)))
    assert plain.minimum_version is ssl.TLSVersion.TLSv1_2 and plain.verify_mode is ssl.CERT_NONE


def test_watcher_reloads_a_changed_pair_into_the_same_context(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = pair(ca, tmp_path, "live")
    files = Files(str(cert), str(key))
    context = server_context(files)
    watcher = CertWatcher(context, files)
    first = serial(context, ca)
    assert not watcher.check()  # nothing changed
    new_cert, new_key = pair(ca, tmp_path, "next")
    new_key.replace(key)  # half-way: the new key with the old certificate
    assert not watcher.check()
    assert serial(context, ca) == first  # the old pair stays in service
    new_cert.replace(cert)
    assert watcher.check() and watcher.reloads == 1
    assert serial(context, ca) != first
    assert not watcher.check()


def test_watcher_keeps_the_old_certificate_when_the_new_file_is_junk(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = pair(ca, tmp_path, "live")
    files = Files(str(cert), str(key))
    context = server_context(files)
    watcher = CertWatcher(context, files)
    first = serial(context, ca)
    cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    assert not watcher.check()
    cert.unlink()  # a missing file (mid-rename) is no change either
    assert not watcher.check()
    assert serial(context, ca) == first


def test_errors_name_the_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = pair(ca, tmp_path, "a")
    _, other_key = pair(ca, tmp_path, "b")
    with pytest.raises(TlsFileError) as missing:
        server_context(Files(str(tmp_path / "nope.pem"), str(key)))
    assert missing.value.field == "cert" and "No such file" in missing.value.reason
    with pytest.raises(TlsFileError) as mismatch:
        server_context(Files(str(cert), str(other_key)))
    assert mismatch.value.field == "key"
    with pytest.raises(TlsFileError) as swapped:
        server_context(Files(str(key), str(cert)))
    assert swapped.value.field == "cert"
