"""Shared lifecycle logic for Docker-API engines (dockerd, and Podman through its compat socket).

`EngineBackend` does everything through aiodocker; `DockerBackend` and `PodmanBackend` only pick the
socket and override the few hooks where Podman's compat API differs (`_resource_config`).

Ownership rule: a container is touched (stopped, removed, restarted, adopted) only if it carries
`proxy.managed=true` and `proxy.instance=<our proxy id>`. Anything else with our derived name is a
name conflict and stays exactly as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from typing import Any, AsyncIterator

import aiodocker

from backends._address import Addressing
from backends._api import held_elsewhere
from backends._exits import stopped_because
from backends._names import STUCK_STATUSES, Names
from backends._output import last_output
from backends._pull import EnginePulls
from backends.base import (
    DEFAULT_STOP_TIMEOUT,
    LABEL_CONTAINER,
    LABEL_KEY,
    LABEL_SPEC,
    BackendError,
    ContainerSpec,
    Instance,
    InstanceState,
    Phases,
    Resources,
)
from backends.control import Health
from backends.options import EngineOptions

log = logging.getLogger(__name__)


def stop_seconds(stop_timeout: float) -> int:
    """The engines' stop timeout is whole seconds: the class's `stop_timeout`, rounded up."""
    return int(math.ceil(stop_timeout))


def spec_hash(spec: ContainerSpec, extra: dict[str, Any] | None = None) -> str:
    """The label that decides whether a stopped container may be restarted for `spec`; `extra` is what the
    backend adds beyond the spec (its network mode, see backends/_address.py)."""
    doc = {
        "image": spec.image,
        "port": spec.port,
        "env": sorted(dict(spec.env).items()),
        "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "command": list(spec.command) if spec.command is not None else None,
        "memory": spec.resources.memory_bytes,
        "cpus": spec.resources.cpus,
        "stop_timeout": stop_seconds(spec.stop_timeout),
        **compose_fields(spec),
        **(extra or {}),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def compose_fields(spec: ContainerSpec) -> dict[str, Any]:
    """The spec hash's part for the compose options (volumes, ports, user, labels): only those set, so the
    containers of a class that sets none keep the hash they had before these options existed."""
    fields = {"volumes": [str(v) for v in spec.volumes], "ports": list(spec.ports), "user": spec.user,
              "labels": sorted(dict(spec.labels).items())}
    return {name: value for name, value in fields.items() if value}


def _stopped_because(info: dict[str, Any], oom_reported: bool) -> str:
    """Why a stopped container stopped, from its inspect JSON (also when it dies before its port is read)."""
    state = info.get("State") or {}
    limit = int((info.get("HostConfig") or {}).get("Memory") or 0)
    code = state.get("ExitCode")
    oom = True if state.get("OOMKilled") else (False if oom_reported else None)
    killed = stopped_because(code, oom, limit)
    return killed or f"exited with code {code}" + (f": {state['Error']}" if state.get("Error") else "")


class EngineBackend(EnginePulls):
    """A Backend over a Docker-compatible API socket (its client and error mapping: backends/_api.py; image
    pulls: backends/_pull.py)."""

    name = "engine"
    oom_reported = True  # State.OOMKilled is the runtime's word: false means not out of memory (backends/_exits.py)

    def __init__(self, options: EngineOptions | None = None, **fields: Any) -> None:
        super().__init__(options, **fields)
        self.network_host = self.options.network_host or "127.0.0.1"
        self.address = Addressing(self.network_host, self.options.network)
        self.reuse_stopped = self.options.reuse_stopped
        self.names = Names(self.proxy_id)

    async def show(self, ref: str) -> dict[str, Any] | None:
        """Container inspect JSON, or None if it does not exist (podman, while it cleans up after a stop or
        removal, can say so with a 500: "does not exist in database: no such container")."""
        docker = await self._client()
        try:
            return await docker.containers.container(ref).show()
        except aiodocker.DockerError as e:
            if e.status == 404 or "no such container" in str(e.message).lower():
                return None
            raise

    # ------------------------------------------------------------------ helpers

    def name_for(self, key: str, spec: ContainerSpec) -> str:
        """The name this key's container has now (see backends/_names.py for why it can change)."""
        name = self.names.current(spec.name, key)
        return f"{name}-r{spec.generation}" if spec.generation else name  # a rollout's new instance (surge)

    def _is_ours(self, info: dict[str, Any]) -> bool:
        return self.owns((info.get("Config") or {}).get("Labels") or info.get("Labels") or {})

    def spec_hash(self, spec: ContainerSpec) -> str:
        return spec_hash(spec, self.address.hash_fields())

    def _resource_config(self, res: Resources) -> dict[str, Any]:
        """HostConfig fields for the limits. Podman overrides this (see backends/podman.py)."""
        return {"Memory": int(res.memory_bytes), "NanoCpus": int(round(res.cpus * 1e9))}

    def create_config(self, key: str, spec: ContainerSpec) -> dict[str, Any]:
        port = f"{spec.port}/tcp"
        host_config = self.address.host_config(spec.port)
        if "PortBindings" in host_config:  # published: the extra ports too, on the same loopback address
            host_config["PortBindings"] = {**host_config["PortBindings"], **{
                extra: [{"HostIp": self.network_host, "HostPort": ""}] for extra in spec.ports}}
        config: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in sorted(dict(spec.env).items())],
            "Labels": self.labels_for(key, spec, self.spec_hash(spec)),
            "ExposedPorts": {port: {}, **{extra: {} for extra in spec.ports}},
            # A stop is SIGTERM, then SIGKILL after the class's stop_timeout (`stop` reads it back, so adopted
            # containers keep theirs). The signal is explicit: podman's imported images default to SIGINT.
            "StopSignal": "SIGTERM",
            "StopTimeout": stop_seconds(spec.stop_timeout),
            "HostConfig": {
                "Init": True,
                **host_config,
                **self._resource_config(spec.resources),
                **({"Binds": [str(v) for v in spec.volumes]} if spec.volumes else {}),
            },
            **self.address.create_fields(),
        }
        if spec.user is not None:
            config["User"] = spec.user
        if spec.entrypoint is not None:
            config["Entrypoint"] = list(spec.entrypoint)
        if spec.command is not None:
            config["Cmd"] = list(spec.command)
        return config

    async def _instance_from(self, info: dict[str, Any], key: str, cls: str, port: int,
                             phases: Phases | None = None) -> Instance:
        """Read the address (backends/_address.py); it can lag a moment behind `start` on some engines.
        `phases` (of a start) gets its `port` phase."""
        for _ in range(20):
            address = self.address.address(info, port)
            state = info.get("State") or {}
            if address is not None and state.get("Running"):
                host, hp = address
                labels = (info.get("Config") or {}).get("Labels") or {}
                instance = Instance(key=key, class_name=cls, host=host, port=hp, id=info["Id"],
                                    spec=labels.get(LABEL_SPEC, ""))
                if phases is None:
                    return instance
                phases.mark("port")
                return phases.on(instance)
            if not state.get("Running") and state.get("Status") in ("exited", "dead"):
                raise BackendError(f"container {info.get('Name', '').lstrip('/')} exited right after start: "
                                   f"{await self._died(info)}")
            await asyncio.sleep(0.1)
            info = await self.show(info["Id"]) or info
        raise BackendError(f"container {info.get('Name', '').lstrip('/')} has {self.address.missing(port)}")

    async def _remove(self, ref: str, force: bool = True) -> None:
        await delete_container(await self._client(), ref, force=force)

    # ------------------------------------------------------------------ Backend protocol

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        want_hash = self.spec_hash(spec)
        phases = Phases()  # [pull], create (or restart, unpause), start, port: each from the end of the one before
        async with self._errors():
            docker = await self._client()
            for _attempt in range(4):
                name = self.name_for(key, spec)
                info = await self.show(name)
                if info is not None:
                    if not self._is_ours(info):
                        raise BackendError(
                            f"name conflict: container {name} exists and is not managed by this proxy")
                    state = info.get("State") or {}
                    labels = (info.get("Config") or {}).get("Labels") or {}
                    if state.get("Status") in STUCK_STATUSES:
                        self._move_on(key, spec, info["Id"], f"status {state.get('Status')}")
                        continue
                    current = labels.get(LABEL_SPEC, want_hash) == want_hash  # (else: started before a config change)
                    if state.get("Running") and not state.get("Paused") and current:
                        log.info("adopting running container %s", name)
                        return await self._instance_from(info, key, spec.name, spec.port)
                    if state.get("Paused") and current:
                        await docker.containers.container(info["Id"]).unpause()
                        phases.mark("unpause")
                        return await self._instance_from(await self.show(info["Id"]) or info, key,
                                                         spec.name, spec.port, phases)
                    if (self.reuse_stopped and labels.get(LABEL_SPEC) == want_hash
                            and state.get("Status") in ("exited", "created")):
                        log.info("restarting stopped container %s", name)
                        cid = info["Id"]
                        await self._start(cid, spec)
                        phases.mark("restart")
                        return await self._instance_from(await self.show(cid) or info, key, spec.name,
                                                         spec.port, phases)
                    if not current and state.get("Running"):
                        log.info("replacing running container %s: it runs another spec than the configured one", name)
                    try:
                        await self._remove(info["Id"], force=True)
                    except aiodocker.DockerError as e:  # the runtime cannot free the name
                        self._move_on(key, spec, info["Id"], e.message or str(e))
                        continue
                await self.address.check(docker, self.daemon_label)
                try:
                    container = await self.create(self.create_config(key, spec), name, spec, phases)
                except aiodocker.DockerError as e:
                    if e.status == 409:  # a concurrent create won the race: look again
                        continue
                    raise
                phases.mark("create")
                await self._start(container.id, spec)
                phases.mark("start")
                info = await self.show(container.id)
                if info is None:
                    raise BackendError(f"container {name} vanished right after start")
                return await self._instance_from(info, key, spec.name, spec.port, phases)
            raise BackendError(f"container {self.name_for(key, spec)} keeps changing under us; giving up")

    def _move_on(self, key: str, spec: ContainerSpec, stuck_id: str, why: str) -> None:
        if self.names.move_on(spec.name, key, stuck_id, why) is None:
            raise BackendError(f"no container name left for key {key!r}: the runtime keeps them stuck ({why})")

    async def cleanup_stuck(self) -> list[str]:
        """Try again to remove the containers a key moved away from. Returns the names now gone."""
        removed = []
        async with self._errors():
            for cid, name in list(self.names.stuck.items()):
                with contextlib.suppress(aiodocker.DockerError):
                    await self._remove(cid, force=True)
                if await self.show(cid) is None:
                    del self.names.stuck[cid]
                    removed.append(name)
                    log.info("removed stuck container %s", name)
        return removed

    async def _start(self, cid: str, spec: ContainerSpec) -> None:
        """Start a created or stopped container of `spec` (backends/_engine_boost.py adds the CPU boost)."""
        await self._start_or_remove(cid)

    async def _start_or_remove(self, cid: str) -> None:
        docker = await self._client()
        try:
            await docker.containers.container(cid).start()
        except aiodocker.DockerError as e:
            if e.status == 304:  # already started
                return
            with contextlib.suppress(Exception):
                await self._remove(cid, force=True)
            raise

    async def stop(self, instance: Instance) -> None:
        async with self._errors():
            docker = await self._client()
            info = await self.show(instance.id)
            if info is None:
                return
            if not self._is_ours(info):
                raise BackendError(f"refusing to stop container {instance.id[:12]}: not managed by this proxy")
            c = docker.containers.container(info["Id"])
            await self._thaw(c, info)
            # SIGTERM, SIGKILL after the class's stop_timeout (as created; the engines' own default is 10 s)
            t = (info.get("Config") or {}).get("StopTimeout")
            try:
                await c.stop(t=t if isinstance(t, int) else stop_seconds(DEFAULT_STOP_TIMEOUT))
            except aiodocker.DockerError as e:
                if e.status not in (304, 404):
                    raise
            if not self.reuse_stopped:
                await self._remove(info["Id"], force=True)

    @staticmethod
    async def _thaw(container: Any, info: dict[str, Any]) -> None:
        """A paused (frozen) container is unpaused before its stop: podman refuses to stop one ("is running or
        paused"), and a frozen process cannot act on SIGTERM anyway. Every stop goes through `stop` (replace
        after timeouts, idle, admin, shutdown), so this is the one place. A failed unpause (unpaused or gone
        meanwhile, the runtime away) is left to the stop that follows: it reports what is wrong."""
        if (info.get("State") or {}).get("Paused"):
            with contextlib.suppress(aiodocker.DockerError):
                await container.unpause()

    async def inspect(self, instance: Instance) -> InstanceState:
        async with self._errors():
            info = await self.show(instance.id)
        if info is None:
            return InstanceState.MISSING
        state = info.get("State") or {}
        if state.get("Running") or state.get("Status") in ("running", "paused", "restarting"):
            return InstanceState.RUNNING
        return InstanceState.EXITED

    async def exit_reason(self, instance: Instance) -> str | None:
        """The runtime's word on why the container stopped: out of memory, a signal, an exit code."""
        async with self._errors():
            info = await self.show(instance.id)
        if info is None:
            return "removed"
        if (info.get("State") or {}).get("Running"):
            return None
        return await self._died(info)

    async def _died(self, info: dict[str, Any]) -> str:
        """Why a container stopped, and what it printed last (backends/_output.py)."""
        words = await last_output(await self._client(), info["Id"])
        return _stopped_because(info, self.oom_reported) + (f"; last output: {words}" if words else "")

    async def health(self, instance: Instance) -> Health:
        """The image's HEALTHCHECK as the engine runs it (`State.Health`; backends/control.py's HealthReporting)."""
        async with self._errors():
            info = await self.show(instance.id)
        if info is None:
            raise BackendError(f"container {instance.id[:12]} is gone")
        check = ((info.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
        state = (info.get("State") or {}).get("Health") or {}
        if not check or check[0] == "NONE" or not state.get("Status"):
            return Health(None)
        last = (state.get("Log") or [{}])[-1]
        return Health(str(state["Status"]), " ".join(str(last.get("Output") or "").split())[:200])

    async def direct_address(self, instance: Instance) -> tuple[str, int] | None:
        """The container's IP and port behind its published port (backends/control.py's DirectlyReachable)."""
        if self.address.network is not None:  # the instance's address is the container's own already
            return None
        async with self._errors():
            info = await self.show(instance.id)
        settings = (info or {}).get("NetworkSettings") or {}
        ip = next((n["IPAddress"] for n in (settings.get("Networks") or {}).values() if n.get("IPAddress")), None)
        for port, bindings in (settings.get("Ports") or {}).items():
            if ip and any(str(b.get("HostPort")) == str(instance.port) for b in bindings or []):
                return str(ip), int(port.split("/")[0])
        return None

    async def watch(self) -> AsyncIterator[str]:
        """Ids of this proxy's containers as they die, stop, are OOM-killed or removed (the runtime's events)."""
        async for event in self._deaths():
            if cid := (event.get("Actor") or {}).get("ID") or event.get("id"):
                yield str(cid)

    async def _ours(self, running_only: bool) -> list[dict[str, Any]]:
        docker = await self._client()
        filters: dict[str, list[str]] = {"label": self.owner_filter()}
        if running_only:
            filters["status"] = ["running"]
        listed = await docker.containers.list(all=True, filters=json.dumps(filters))
        out = []
        for c in listed:
            info = await self.show(c.id)
            if info is None or not self._is_ours(info):  # re-check: never trust the filter alone
                continue
            running = bool((info.get("State") or {}).get("Running"))
            if running_only and not running:
                continue
            out.append(info)
        return out

    async def claimed_elsewhere(self) -> list[str]:
        """Our running containers that another live proxy process on this host created (one list call)."""
        async with self._errors():
            docker = await self._client()
            filters = json.dumps({"label": self.owner_filter(), "status": ["running"]})
            listed = await docker.containers.list(filters=filters)
        return sorted(str((c["Names"] or ["?"])[0]).lstrip("/") for c in listed
                      if self.owns(c["Labels"] or {}) and held_elsewhere(c["Labels"] or {}))

    async def list_instances(self) -> list[Instance]:
        out: list[Instance] = []
        async with self._errors():
            for info in await self._ours(running_only=True):
                labels = info["Config"]["Labels"]
                address = self.address.found(info)
                if address is None:
                    continue
                out.append(Instance(key=labels.get(LABEL_KEY, ""), class_name=labels.get(LABEL_CONTAINER, ""),
                                    host=address[0], port=address[1], id=info["Id"], spec=labels.get(LABEL_SPEC, "")))
        return out

    async def cleanup_stopped(self) -> list[str]:
        """Remove our stopped containers (orphans from a previous run). Returns their names."""
        removed = []
        async with self._errors():
            for info in await self._ours(running_only=False):
                state = info.get("State") or {}
                if state.get("Running"):
                    continue
                try:
                    await self._remove(info["Id"], force=True)
                except aiodocker.DockerError as e:  # stuck: remembered, retried by cleanup_stuck
                    self.names.stuck[info["Id"]] = info.get("Name", "").lstrip("/")
                    log.warning("cannot remove stopped container %s: %s", info.get("Name", "").lstrip("/"),
                                e.message or e)
                    continue
                removed.append(info.get("Name", "").lstrip("/"))
        return removed


async def delete_container(docker: aiodocker.Docker, ref: str, force: bool = True) -> None:
    """Remove a container; gone already (404) or being removed (409) is done. A container exiting at that very
    moment makes podman answer 500 "could not be stopped ... container state improper": that is asked again."""
    for attempt in range(10):
        try:
            await docker.containers.container(ref).delete(force=force, v=True)
            return
        except aiodocker.DockerError as e:
            if e.status in (404, 409):
                return
            if e.status != 500 or "state improper" not in str(e.message) or attempt == 9:
                raise
            await asyncio.sleep(0.2)
