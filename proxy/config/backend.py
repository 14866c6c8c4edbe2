"""`backend`: which runtime runs the instances and how to reach it (part of proxy/config/schema.py's schema).

Shared fields, then one section per backend type; `Backend.options` is the selected backend's constructor
arguments (backends/__init__.py `create_backend`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr

from backends.options import EngineOptions
from proxy.config.base import Section, shown
from proxy.config.units import Name, NonEmptyStr

__all__ = ["Backend", "BackendConfig", "DockerOptions", "PodmanOptions", "RegistryLogin", "SwarmOptions"]


def _socket(value: str) -> str:
    if not value.startswith(("unix://", "tcp://", "http://", "npipe://")):
        raise ValueError("expected unix:///path or tcp://host:port")
    return value


Socket = Annotated[str, AfterValidator(_socket)]
ENGINE = EngineOptions()  # the defaults, declared once in backends/options.py


class DockerOptions(Section):
    """`backend.docker`: DockerBackend's user-facing `EngineOptions` (backends/options.py)."""

    socket: Socket | None = Field(
        default=None, description="API socket",
        json_schema_extra=shown("`$DOCKER_HOST` or `unix:///var/run/docker.sock`"))
    reuse_stopped: bool = Field(
        default=ENGINE.reuse_stopped,
        description="restart a stopped container of the same spec instead of recreating it")
    network: NonEmptyStr | None = Field(
        default=None,
        description="an existing user network: each instance joins it and is addressed by its IP there, with no "
                    "host port published (for a proxy that itself runs in a container on that network)",
        json_schema_extra=shown("none: a port published on 127.0.0.1"))


class PodmanOptions(DockerOptions):
    """`backend.podman`: PodmanBackend's user-facing `EngineOptions`."""

    socket: Socket | None = Field(
        default=None, description="API socket",
        json_schema_extra=shown("`$PODMAN_HOST`, `$CONTAINER_HOST`, `unix:///run/podman/podman.sock` (root) or "
                                 "`unix://$XDG_RUNTIME_DIR/podman/podman.sock` (rootless)"))


class SwarmOptions(Section):
    """`backend.swarm`: SwarmBackend's user-facing `EngineOptions` (one service per key on a swarm manager)."""

    socket: Socket | None = Field(
        default=None, description="a swarm manager's API socket",
        json_schema_extra=shown("`$DOCKER_HOST` or `unix:///var/run/docker.sock`"))
    reuse_stopped: bool = Field(
        default=ENGINE.reuse_stopped,
        description="keep a stopped key's service (scaled to 0) for its next start instead of removing it")
    network: NonEmptyStr | None = Field(
        default=None,
        description="an existing attachable overlay network: each instance joins it and is addressed by its IP "
                    "there, with no port published (for a proxy attached to that network)",
        json_schema_extra=shown("none: a port published in host mode on the task's node"))
    network_host: NonEmptyStr | None = Field(
        default=None, description="the host to dial a published port on",
        json_schema_extra=shown("the task's node address, as the swarm reports it"))


class RegistryLogin(Section):
    """`backend.registries.<host[:port]>`: who docker/podman/swarm are at that registry when pulling."""

    username: NonEmptyStr = Field(description="user name")
    password: SecretStr = Field(description="password or token (write `${VAR}`, not the secret itself)")


class Backend(Section):
    """`backend`: shared fields, then one section per backend type (a new backend adds a section).

    The flat form of older configs (`backend.socket`, `backend.reuse_stopped`) is still accepted and
    overrides the selected section's value.
    """

    type: Literal["stub", "process", "docker", "podman", "swarm"] = Field(
        default="stub", description="`stub`, `process` (each instance a child process running `command`), "
                                    "`docker`, `podman` or `swarm` (one service per key)")
    proxy_id: Name = Field(
        default="default",
        description="label value marking containers as this proxy's (keep it stable across restarts; set it to "
                    "`default` to keep containers of a version before the derived default)",
        json_schema_extra=shown("`<host>-<8 hex of the config file's path>`; clustered: `cluster-<8 hex of the "
                                "etcd endpoints and prefix>`"))
    docker: DockerOptions = DockerOptions()
    podman: PodmanOptions = PodmanOptions()
    swarm: SwarmOptions = SwarmOptions()
    registries: dict[str, RegistryLogin] = Field(
        default_factory=dict, description="registry credentials by `host[:port]` (`docker.io` for Docker Hub), "
                                          "before those of the Docker config file (`$DOCKER_CONFIG/config.json`)")
    flat_socket: Socket | None = Field(default=None, alias="socket", json_schema_extra={"doc_hidden": True})
    flat_reuse_stopped: bool | None = Field(
        default=None, alias="reuse_stopped", json_schema_extra={"doc_hidden": True})

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for the selected backend's constructor (empty for the stub)."""
        section: BaseModel | None = getattr(self, self.type, None)
        if section is None:
            return {}
        flat = {"socket": self.flat_socket, "reuse_stopped": self.flat_reuse_stopped}
        logins = {host: {"username": login.username, "password": login.password.get_secret_value()}
                  for host, login in self.registries.items()}
        return {**section.model_dump(), **({"registries": logins} if logins else {}),
                **{k: v for k, v in flat.items() if v is not None}}

    @property
    def socket(self) -> str | None:
        return self.options.get("socket", self.flat_socket)

    @property
    def reuse_stopped(self) -> bool:
        """Keep stopped containers for a warm restart (the stub has none: True unless set flat)."""
        reuse = self.options.get("reuse_stopped", self.flat_reuse_stopped)
        return ENGINE.reuse_stopped if reuse is None else bool(reuse)


BackendConfig = Backend  # the name earlier code imported
