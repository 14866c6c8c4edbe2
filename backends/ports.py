"""Ports the in-process and child instances listen on: below the kernel's ephemeral range.

Two things take ports from that range behind the proxy's back: its own outgoing connections (readiness probes,
requests) take their local ports there, and podman (netavark) publishes containers on ports there without
holding them, with a DNAT rule that sends even 127.0.0.1 traffic for the port to the container. A listener the
kernel gives such a port (bind to port 0) is then never reached: its clients are refused or answered by a
container. Ports below the range are free of both.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LISTEN_FROM = 10000  # the lowest port an instance is given (where the kernel's ephemeral range allows)
TRIES = 50  # random picks before falling back to a port the kernel picks


def free_port(host: str, port: int = 0) -> int:
    """`port` (0: one the kernel picks) if it is free on `host` now; OSError if it is not."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, port))
        return int(s.getsockname()[1])


def listen_range() -> range:
    """Ports for children: below the kernel's ephemeral range, from which the proxy's own outgoing connections
    (readiness probes, requests) take their local ports. A port picked there can be taken by such a connection
    before the child binds it (`bind: Address already in use`, seen a few times in 1000 starts at once)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(LISTEN_FROM, low) if low - LISTEN_FROM >= 1000 else range(0)


def listening_socket(host: str, taken: set[int] | frozenset[int] = frozenset()) -> socket.socket:
    """A socket listening on `host` at a free port of `listen_range` (not in `taken`); else on one the kernel picks."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = listen_range()
    for port in [random.choice(ports) for _ in range(TRIES if ports else 0)] + [0]:
        if port in taken:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError:
            sock.close()
            if port == 0:
                raise
    raise OSError("no port to listen on")  # (not reached: port 0 either binds or raises)
