"""Swarm backend: one Docker Swarm service per key, scaled to 1 to run and to 0 to stop.

Swarm's scheduler places the task on any node of the swarm: that is the multi-host part. The proxy
asks only the manager's API socket (services, tasks, nodes); it never talks to the other nodes' daemons.

Where an instance is reached (the trade-off, also in the README):
- published (default): the service publishes the class's port in swarm's `host` mode on a port swarm
  picks, and the proxy dials the task's node at that port (`network_host`, else the node's address as
  swarm reports it). No routing mesh in the way, but the port is open on every interface of that node:
  firewall the nodes, or use the network mode;
- network (`network: NAME`): the service joins the existing attachable overlay network NAME and publishes
  nothing; the proxy, attached to NAME too (the sidecar deployment), dials the task's IP there.

Swarm resolves the image in a registry on every start (a ~45 s stall per start when none answers): give the
class an image a reachable registry serves, e.g. `python -m backends.image push --registry 127.0.0.1:5000`.
The class's `pull` policy: `missing` and `always` look the tag up in the registry at each create and pin its
digest (each node then pulls that digest when it lacks it: the pull is in the task's start); `never` skips the
lookup and gives swarm the name as it is, for images already on the nodes (no pinning: nodes may run different
builds of a tag, and dockerd still tries a pull of a tag at task start but runs its local image when that fails).
Registry credentials (backends/_pull.py) go with the lookup and the service, so nodes can pull private images.

Lifecycle rules: the restart policy is `none`, so a task that dies stays dead and the proxy decides (its
crash-loop breaker, its restart on the next request); a start of a service that has no live task forces a
new task (ForceUpdate). A stop scales to 0, which removes the task's container; the service (its spec)
stays for the next start unless `reuse_stopped: false`. Instance ids are task ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Mapping

import aiodocker

from backends._api import ApiClient, held_elsewhere
from backends._exits import stopped_because
from backends._engine import spec_hash, stop_seconds
from backends._names import service_name
from backends._pull import Credentials
from backends.base import (
    LABEL_CONTAINER,
    LABEL_KEY,
    LABEL_PORT,
    LABEL_SPEC,
    BackendError,
    ContainerSpec,
    Instance,
    InstanceState,
    Phases,
)
from backends.options import EngineOptions

log = logging.getLogger(__name__)

TASK_LABEL = "com.docker.swarm.task.id"  # on the task's container: maps a container event to its task
LIVE = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
POLL = 0.01  # seconds between looks at a task that is starting or stopping (one API call each)
START_WITHIN = 120.0  # a task not running by then is given up (the manager's own start_timeout is shorter)
STOP_MARGIN = 10.0  # seconds beyond the stop timeout to wait for the task to be gone


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict((doc.get("Spec") or {}).get("Labels") or {})


class SwarmBackend(ApiClient):
    """A Backend over a swarm manager's API socket."""

    name = "swarm"
    daemon_label = "swarm manager"

    def __init__(self, options: EngineOptions | None = None, **fields: Any) -> None:
        super().__init__(options, **fields)
        self.credentials = Credentials(self.options.registries)
        self.network_host = self.options.network_host
        self.network = self.options.network
        self.reuse_stopped = self.options.reuse_stopped
        self._node_addr: dict[str, str] = {}

    def _default_socket(self) -> str:
        from backends.docker import default_docker_socket

        return default_docker_socket()

    # ------------------------------------------------------------------ the API, as this backend uses it

    async def _get(self, path: str, **params: Any) -> Any:
        docker = await self._client()
        query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
        return await docker._query_json(path, "GET", params=query or None)

    async def _post(self, path: str, body: Any, headers: Mapping[str, str] | None = None, **params: Any) -> Any:
        docker = await self._client()
        return await docker._query_json(path, "POST", data=json.dumps(body), params=params or None, headers=headers)

    async def _maybe(self, path: str) -> dict[str, Any] | None:
        """GET a service, task or node; None when it does not exist."""
        try:
            return dict(await self._get(path))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise

    def _is_ours(self, service: dict[str, Any]) -> bool:
        return self.owns(_labels(service))

    def spec_hash(self, spec: ContainerSpec) -> str:
        return spec_hash(spec, {"swarm": True, **({"network": self.network} if self.network else {})})

    def service_spec(self, key: str, spec: ContainerSpec, name: str) -> dict[str, Any]:
        labels = self.labels_for(key, spec, self.spec_hash(spec))
        container: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in sorted(dict(spec.env).items())],
            "Labels": labels,
            "Init": True,
            "StopSignal": "SIGTERM",
            "StopGracePeriod": stop_seconds(spec.stop_timeout) * 10**9,
        }
        if spec.entrypoint is not None:
            container["Command"] = list(spec.entrypoint)
        if spec.command is not None:
            container["Args"] = list(spec.command)
        if spec.user is not None:
            container["User"] = spec.user
        if spec.volumes:  # a named volume is created on the task's node when missing; a bind needs the path there
            container["Mounts"] = [{"Type": "bind" if v.bind else "volume", "Source": v.source, "Target": v.target,
                                    "ReadOnly": v.read_only} for v in spec.volumes]
        task: dict[str, Any] = {
            "ContainerSpec": container,
            "Resources": {"Limits": {"NanoCPUs": int(round(spec.resources.cpus * 1e9)),
                                     "MemoryBytes": int(spec.resources.memory_bytes)}},
            "RestartPolicy": {"Condition": "none"},
            "ForceUpdate": 0,
        }
        out: dict[str, Any] = {"Name": name, "Labels": labels, "TaskTemplate": task,
                               "Mode": {"Replicated": {"Replicas": 1}}}
        if self.network is None:
            out["EndpointSpec"] = {"Mode": "vip", "Ports": [
                {"Protocol": protocol, "TargetPort": int(number), "PublishMode": "host"}
                for number, _, protocol in (p.partition("/") for p in (f"{spec.port}/tcp", *spec.ports))]}
        else:
            task["Networks"] = [{"Target": self.network}]
        return out

    async def _pinned(self, image: str) -> str:
        """`image@digest` as the registry has it now (what `docker service create` does): every node runs the
        same image, and an image no registry serves is a clear 503 at once, not a task stuck preparing."""
        try:
            docker = await self._client()
            found = await docker._query_json(f"distribution/{image}/json", headers=self.credentials.header(image))
        except aiodocker.DockerError as e:
            raise BackendError(f"image {image} cannot be resolved in a registry (a swarm starts only images a "
                               f"registry serves): {e.message}") from e
        digest = (found.get("Descriptor") or {}).get("digest")
        return f"{image.split('@')[0]}@{digest}" if digest else image

    async def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        """The service's tasks that swarm wants running, newest first."""
        tasks = await self._get("tasks", filters={"service": [service_id], "desired-state": ["running"]})
        return sorted(tasks, key=lambda t: t.get("CreatedAt", ""), reverse=True)

    async def _scale(self, service: dict[str, Any], replicas: int, force: bool = False) -> None:
        spec = service["Spec"]
        spec.setdefault("Mode", {}).setdefault("Replicated", {})["Replicas"] = replicas
        if force:
            spec["TaskTemplate"]["ForceUpdate"] = int(spec["TaskTemplate"].get("ForceUpdate") or 0) + 1
        await self._post(f"services/{service['ID']}/update", spec, version=service["Version"]["Index"])

    # ------------------------------------------------------------------ where a task is reached

    async def _address(self, task: dict[str, Any], port: int) -> tuple[str, int] | None:
        if self.network is not None:
            for attachment in task.get("NetworksAttachments") or []:
                net = attachment.get("Network") or {}
                if self.network in ((net.get("Spec") or {}).get("Name"), net.get("ID")):
                    for cidr in attachment.get("Addresses") or []:
                        return str(cidr).split("/")[0], port
            return None
        for p in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []:
            if p.get("TargetPort") == port and p.get("Protocol", "tcp") == "tcp" and p.get("PublishedPort"):
                return await self._node_host(task.get("NodeID", "")), int(p["PublishedPort"])
        return None

    async def _node_host(self, node_id: str) -> str:
        if self.network_host:
            return self.network_host
        if node_id not in self._node_addr:
            node = await self._maybe(f"nodes/{node_id}") or {}
            addr = str((node.get("Status") or {}).get("Addr") or "")
            self._node_addr[node_id] = addr if addr and addr != "0.0.0.0" else "127.0.0.1"
        return self._node_addr[node_id]

    async def _instance(self, service: dict[str, Any], task: dict[str, Any]) -> Instance | None:
        labels = _labels(service)
        port = int(labels.get(LABEL_PORT) or 0)
        address = await self._address(task, port)
        if address is None:
            return None
        return Instance(key=labels.get(LABEL_KEY, ""), class_name=labels.get(LABEL_CONTAINER, ""),
                        host=address[0], port=address[1], id=task["ID"], spec=labels.get(LABEL_SPEC, ""))

    # ------------------------------------------------------------------ Backend protocol

    def service_for(self, key: str, spec: ContainerSpec) -> str:
        """The key's one service, whatever its spec's generation (`ServicePerKey`)."""
        return service_name(self.proxy_id, spec.name, key)

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        name = self.service_for(key, spec)
        phases = Phases()  # create (or restart), start, port
        async with self._errors():
            for _attempt in range(4):
                service = await self._maybe(f"services/{name}")
                if service is not None and not self._is_ours(service):
                    raise BackendError(f"name conflict: service {name} exists and is not managed by this proxy")
                if service is not None and _labels(service).get(LABEL_SPEC) != self.spec_hash(spec):
                    await self._remove(service["ID"])  # another spec: recreate
                    service = None
                try:
                    if service is None:
                        body = self.service_spec(key, spec, name)
                        if spec.pull != "never":  # never: no registry lookup, the nodes' own image as named
                            body["TaskTemplate"]["ContainerSpec"]["Image"] = await self._pinned(spec.image)
                        created = await self._post("services/create", body, self.credentials.header(spec.image))
                        service_id, old = str(created["ID"]), set[str]()
                        phases.mark("create")
                    else:
                        service_id = service["ID"]
                        tasks = await self._tasks(service_id)
                        live = [t for t in tasks if (t.get("Status") or {}).get("State") in LIVE]
                        if live and service["Spec"]["Mode"]["Replicated"]["Replicas"]:
                            log.info("adopting service %s", name)
                            if (live[0].get("Status") or {}).get("State") == "running":
                                adopted = await self._instance(service, live[0])
                                if adopted is not None:
                                    return adopted
                            old = set[str]()  # still starting: wait for it
                        else:  # scaled to 0, or its task ended: a new task
                            old = {t["ID"] for t in tasks}
                            await self._scale(service, 1, force=True)
                            phases.mark("restart")
                except aiodocker.DockerError as e:
                    if e.status in (409, 500) and ("already exists" in str(e.message) or "out of sequence"
                                                    in str(e.message)):
                        continue  # a concurrent create or update won the race: look again
                    raise
                return await self._running(name, service_id, old, phases)
            raise BackendError(f"service {name} keeps changing under us; giving up")

    async def _running(self, name: str, service_id: str, old: set[str], phases: Phases) -> Instance:
        """Wait for the service's new task (none of the `old` ones) to run and have an address; scale back to
        0 if it never does. One tasks call per look, every POLL."""
        deadline = time.monotonic() + START_WITHIN
        started = False
        try:
            while time.monotonic() < deadline:
                try:
                    task = next((t for t in await self._tasks(service_id) if t["ID"] not in old), None)
                except aiodocker.DockerError as e:
                    if e.status == 404:
                        raise BackendError(f"service {name} was removed while starting") from e
                    raise
                status = (task or {}).get("Status") or {}
                state = status.get("State")
                if task is not None and state not in LIVE:
                    raise BackendError(f"service {name}: task {state}: {status.get('Err') or status.get('Message')}")
                if task is not None and state == "running":
                    if not started:
                        phases.mark("start")
                        started = True
                    service = await self._maybe(f"services/{service_id}") or {}
                    instance = await self._instance(service, task)
                    if instance is not None:
                        phases.mark("port")
                        return phases.on(instance)
                await asyncio.sleep(POLL)
            raise BackendError(f"service {name}: no running task within {START_WITHIN:g}s")
        except BaseException:
            await self._give_up(service_id)
            raise

    async def _give_up(self, service_id: str) -> None:
        """Best effort: a start that failed (or was cancelled) leaves no task that could run later."""
        try:
            service = await self._maybe(f"services/{service_id}")
            if service is not None:
                await self._scale(service, 0)
        except Exception as e:  # noqa: BLE001 - the start's own error is the one to report
            log.warning("could not scale service %s back to 0: %s", service_id[:12], e)

    async def stop(self, instance: Instance) -> None:
        async with self._errors():
            task = await self._maybe(f"tasks/{instance.id}")
            if task is None:
                return
            service = await self._maybe(f"services/{task['ServiceID']}")
            if service is None:
                return await self._gone(instance.id, STOP_MARGIN)
            if not self._is_ours(service):
                raise BackendError(f"refusing to stop service {service['Spec'].get('Name')}: not managed by "
                                   f"this proxy")
            grace = int((service["Spec"]["TaskTemplate"].get("ContainerSpec") or {}).get("StopGracePeriod") or 0)
            if self.reuse_stopped:
                await self._scale(service, 0)
            else:
                await self._remove(service["ID"])
            await self._gone(instance.id, grace / 1e9 + STOP_MARGIN)

    async def _gone(self, task_id: str, within: float) -> None:
        """Wait until the task's container has stopped (the task ended or was removed)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            task = await self._maybe(f"tasks/{task_id}")
            if task is None or (task.get("Status") or {}).get("State") not in LIVE:
                return
            await asyncio.sleep(POLL)
        raise BackendError(f"task {task_id[:12]} still running {within:g}s after its stop")

    async def _remove(self, service_id: str) -> None:
        docker = await self._client()
        try:
            await docker.services.delete(service_id)
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise

    async def inspect(self, instance: Instance) -> InstanceState:
        """A task outlives its service for a while in swarm's store: without the service it is MISSING."""
        async with self._errors():
            task = await self._maybe(f"tasks/{instance.id}")
            if task is None or await self._maybe(f"services/{task['ServiceID']}") is None:
                return InstanceState.MISSING
        if task.get("DesiredState") == "running" and (task.get("Status") or {}).get("State") in LIVE:
            return InstanceState.RUNNING
        return InstanceState.EXITED

    async def exit_reason(self, instance: Instance) -> str | None:
        async with self._errors():
            task = await self._maybe(f"tasks/{instance.id}")
        if task is None:
            return "removed"
        status = task.get("Status") or {}
        if status.get("State") in LIVE and task.get("DesiredState") == "running":
            return None
        code = (status.get("ContainerStatus") or {}).get("ExitCode")
        limit = int(((task.get("Spec") or {}).get("Resources") or {}).get("Limits", {}).get("MemoryBytes") or 0)
        if killed := stopped_because(code, None, limit):  # a task has no OOMKilled
            return killed
        err = status.get("Err")
        return f"task {status.get('State')}, exit code {code}" + (f": {err}" if err else "")

    async def watch(self) -> AsyncIterator[str]:
        """Task ids of this proxy's instances whose containers die on this node (the manager's own; other
        nodes' are caught by the periodic reconcile)."""
        async for event in self._deaths():
            if task_id := ((event.get("Actor") or {}).get("Attributes") or {}).get(TASK_LABEL):
                yield str(task_id)

    async def _services(self) -> list[dict[str, Any]]:
        listed = await self._get("services", filters={"label": self.owner_filter()})
        return [s for s in listed if self._is_ours(s)]  # never trust the filter alone

    async def claimed_elsewhere(self) -> list[str]:
        """Our running services that another live proxy process on this host created."""
        async with self._errors():
            services = await self._services()
        return sorted(str(s["Spec"].get("Name", "")) for s in services
                      if s["Spec"]["Mode"].get("Replicated", {}).get("Replicas") and held_elsewhere(_labels(s)))

    async def list_instances(self) -> list[Instance]:
        out: list[Instance] = []
        async with self._errors():
            for service in await self._services():
                for task in await self._tasks(service["ID"]):
                    if (task.get("Status") or {}).get("State") == "running":
                        instance = await self._instance(service, task)
                        if instance is not None:
                            out.append(instance)
        return out

    async def cleanup_stopped(self) -> list[str]:
        """Remove our services that run nothing (scaled to 0, or their task ended). Returns their names."""
        removed = []
        async with self._errors():
            for service in await self._services():
                if any((t.get("Status") or {}).get("State") in LIVE for t in await self._tasks(service["ID"])):
                    continue
                await self._remove(service["ID"])
                removed.append(str(service["Spec"].get("Name", "")))
        return removed
