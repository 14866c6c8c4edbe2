"""Instances listen below the kernel's ephemeral range (backends/ports.py): podman publishes containers on ports
of that range with a DNAT rule that takes even 127.0.0.1 traffic, without holding the port, so a listener the
kernel gave such a port (bind to 0) was refused for a whole start (seen in the dashboard test beside podman)."""

from __future__ import annotations

from pathlib import Path

from backends.base import ContainerSpec
from backends.ports import listen_range, listening_socket
from backends.stub import StubBackend
from tests.unit.conftest import REAL_CLOCK



def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_listening_socket_is_below_the_ephemeral_range_and_avoids_taken_ports() -> None:
    ports = listen_range()
    assert ports and ports.stop == ephemeral_low()
    sockets = [listening_socket("127.0.0.1") for _ in range(20)]
    try:
        got = {s.getsockname()[1] for s in sockets}
        assert len(got) == 20 and all(p in ports for p in got)
        again = listening_socket("127.0.0.1", taken=got)
        assert again.getsockname()[1] not in got
        again.close()
    finally:
        for s in sockets:
            s.close()


@REAL_CLOCK
async def test_the_stub_backend_listens_below_the_ephemeral_range() -> None:
    backend = StubBackend()
    try:
        spec = ContainerSpec(name="web", image="stub:tests.support.prometheus:create_app", port=8080)
        instance = await backend.start("k", spec)
        assert instance.port < ephemeral_low()
    finally:
        await backend.close()
