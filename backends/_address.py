"""Where an engine's instance is reachable: the one rule that create, start and adoption all follow.

Published (the default): the container publishes its port on `network_host` of the engine's host and the
proxy, on that host, dials `127.0.0.1:<published port>`. A proxy that itself runs in a container (the sidecar
deployment, with the engine's socket mounted) cannot reach the host's loopback, hence the other mode.
Network (`network: NAME`): the container joins the existing user network NAME and publishes nothing; the
proxy, on that network too (or on the Linux host, which routes to its bridge networks), dials the container's
IP there at the spec's port. The IP is read after every start, so a restart that changes it is fine.

The container's port is also written as a label, so adoption knows it without a published port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiodocker

from backends.base import LABEL_PORT, BackendError


def _labels(info: dict[str, Any]) -> dict[str, str]:
    labels = (info.get("Config") or {}).get("Labels") or {}
    return dict(labels)


@dataclass(frozen=True)
class Addressing:
    """How instances are attached and found: published on `network_host`, or on the user `network`."""

    network_host: str = "127.0.0.1"
    network: str | None = None

    def host_config(self, port: int) -> dict[str, Any]:
        """HostConfig fields: a port binding, or the network to join (and no binding)."""
        if self.network is None:
            return {"PortBindings": {f"{port}/tcp": [{"HostIp": self.network_host, "HostPort": ""}]}}
        return {"NetworkMode": self.network}

    def create_fields(self) -> dict[str, Any]:
        """Top-level create fields: the endpoint on the user network (podman's compat API wants it here)."""
        if self.network is None:
            return {}
        return {"NetworkingConfig": {"EndpointsConfig": {self.network: {}}}}

    def hash_fields(self) -> dict[str, Any]:
        """What the spec hash covers beyond the spec: a stopped container of the other mode is recreated,
        not restarted unreachable. Empty when published, so existing containers keep their hash."""
        return {} if self.network is None else {"network": self.network}

    def address(self, info: dict[str, Any], port: int) -> tuple[str, int] | None:
        """(host, port) to dial for the container's `port`, or None while the engine has not assigned it."""
        settings = info.get("NetworkSettings") or {}
        if self.network is None:
            for binding in (settings.get("Ports") or {}).get(f"{port}/tcp") or []:
                hp = binding.get("HostPort")
                if hp and str(hp).isdigit() and int(hp) > 0:
                    return self.network_host, int(hp)
            return None
        ip = ((settings.get("Networks") or {}).get(self.network) or {}).get("IPAddress")
        return (str(ip), port) if ip else None

    def missing(self, port: int) -> str:
        """What `address` found lacking, for the error."""
        if self.network is None:
            return f"no published port {port}/tcp"
        return f"no address on network {self.network!r}"

    def found(self, info: dict[str, Any]) -> tuple[str, int] | None:
        """The address of an adopted container: its labelled port, else (created before the label) the
        first tcp port that has an address."""
        labelled = _labels(info).get(LABEL_PORT, "")
        if labelled.isdigit():
            return self.address(info, int(labelled))
        ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
        for name in sorted(ports):
            number, _, proto = name.partition("/")
            if proto == "tcp" and number.isdigit() and (found := self.address(info, int(number))):
                return found
        return None

    async def check(self, docker: aiodocker.Docker, daemon: str) -> None:
        """Before a create: the user network must exist (the engine would say only "not found")."""
        if self.network is None:
            return
        try:
            await docker.networks.get(self.network)
        except aiodocker.DockerError as e:
            if e.status == 404:
                raise BackendError(f"network {self.network!r} does not exist on the {daemon}: create it first "
                                   f"(`{daemon.split()[0]} network create {self.network}`)") from e
            raise
