"""`EngineOptions`: the constructor options of the Docker-API backends (docker, podman, swarm), declared once.

The backends take one `EngineOptions` (or its fields as keywords, as config.yaml's `backend.<type>` section
and the tests pass them); proxy/config/backend.py documents the user-facing ones and takes its defaults from
here, so a default is written in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["EngineOptions"]

@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """How a backend reaches its engine's API and what it owns there."""

    socket: str | None = None  # None: the backend's default (`$DOCKER_HOST`, `$PODMAN_HOST`, the usual path)
    proxy_id: str = "default"  # the `proxy.instance` label value: what this proxy owns
    network_host: str | None = None  # where a published port is dialled (docker/podman: 127.0.0.1)
    network: str | None = None  # an existing user/overlay network the instances join instead of publishing
    # Warm restart of our stopped container vs remove+create+start, measured with bench/warm_restart.py
    # (2-core Debian 12 VM, model-service image, median of 12 cycles, time until started + port known):
    #   docker 20.10: restart 331 ms, recreate 345 ms     podman 4.3: restart 191 ms, recreate 270 ms
    # Restarting wins on both, so `stop` leaves the container stopped and `start` restarts it when the
    # spec hash matches (a different spec is removed and recreated). `reuse_stopped=False` removes on stop.
    reuse_stopped: bool = True
    request_timeout: float = 60.0
    connect_timeout: float = 5.0
    registries: Mapping[str, Mapping[str, str]] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of(cls, options: EngineOptions | None = None, **fields: Any) -> EngineOptions:
        """`options` with `fields` on top (a TypeError names an unknown one, as a constructor would)."""
        return dataclasses.replace(options or cls(), **fields)
