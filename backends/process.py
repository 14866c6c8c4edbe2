"""The process backend: each instance is a local child process, for hosts without a container runtime.

An instance runs the class's `entrypoint` + `command` (with neither: this interpreter running the model
service, `python -m model_service`), with the proxy's environment, then the class's `env`, then `PORT` (a
free port on 127.0.0.1, picked just before the start below the kernel's ephemeral range, where the proxy's own
connections take theirs: `listen_range`), `HOST` and `INSTANCE_ID` (a class's `env_file` is already
merged into its `env`, and a per-start env from the control API into the spec's). `image` and the instance
type's limits are not applied: a child process is neither isolated nor limited. The options only a container
has (`volumes`, `ports`, `user`, `labels`) are refused by the config (proxy/config/schema.py), not silently dropped.

What differs from a container, and why:
- Instances do not outlive the proxy. `close()` stops every child, so there is nothing to adopt after a
  restart and `list_instances` lists nothing (as with the stub); a proxy killed with SIGKILL leaves its
  children running (they are in their own sessions, so they do not get the terminal's signals either).
- Labels have no equivalent: ownership is "a child of this Backend object", which nothing else can claim.
- A stopped child leaves nothing behind; one that exited by itself is kept (for `exit_reason`) until
  `cleanup_stopped` or the key's next start.
- The port is free when picked and bound by the child a moment later; another process may take it in
  between (the start then fails its readiness wait, and the next start picks another).

A stop sends SIGTERM to the child's process group and SIGKILL after the class's `stop_timeout`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sys
from dataclasses import dataclass

from backends._spawn import Child, spawn
from backends.base import BackendError, ContainerSpec, Instance, InstanceState, Phases
from backends.ports import free_port, listen_range

DEFAULT_ARGV = (sys.executable, "-m", "model_service")


@dataclass
class _Child:
    instance: Instance
    process: Child
    stop_timeout: float


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class ProcessBackend:
    name = "process"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._ids = itertools.count(1)
        self._children: dict[str, _Child] = {}  # by instance id: running, or exited by itself
        self._latest: dict[tuple[str, str], str] = {}  # (class, key) -> its last child's instance id
        self._ports: set[int] = set()  # the ports of the children in `_children`
        self._range = listen_range()

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        old = self._children.get(self._latest.get((spec.name, key), ""))
        if old is not None and old.process.returncode is not None:
            self._forget(old.instance.id)  # the key's last crash, kept for exit_reason until now
        argv = [*(spec.entrypoint or ()), *(spec.command or ())] or list(DEFAULT_ARGV)
        phases = Phases()
        instance_id = f"proc-{next(self._ids)}"
        env = {**os.environ, **spec.env, "HOST": self.host, "INSTANCE_ID": instance_id}
        picked: list[int] = []

        def pick() -> int:  # on the spawning thread (backends/_spawn.py says why)
            picked.append(self._pick_port())
            return picked[-1]

        try:
            port, process = await spawn(argv, env, pick)
        except OSError as exc:
            self._ports.difference_update(picked)
            raise BackendError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        phases.mark("start")
        instance = phases.on(Instance(key=key, class_name=spec.name, host=self.host, port=port, id=instance_id))
        self._children[instance_id] = _Child(instance, process, spec.stop_timeout)
        self._latest[(spec.name, key)] = instance_id
        return instance

    def _pick_port(self) -> int:
        """A free port (a test bind) from `listen_range` that no child of ours was given or is being given."""
        for _ in range(50 if self._range else 0):
            port = random.choice(self._range)
            if port in self._ports:
                continue
            try:
                self._ports.add(free_port(self.host, port))  # taken from now: a start that awaits its spawn
                return port  # meanwhile must not give it to another
            except OSError:
                continue
        port = free_port(self.host)
        self._ports.add(port)
        return port

    def _forget(self, instance_id: str) -> _Child | None:
        child = self._children.pop(instance_id, None)
        if child is not None:
            self._ports.discard(child.instance.port)
        return child

    async def stop(self, instance: Instance) -> None:
        child = self._forget(instance.id)
        if child is not None:
            await self._terminate(child)

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM to the whole process group, SIGKILL after stop_timeout; returns once the child is reaped."""
        process = child.process
        for sig, wait in ((signal.SIGTERM, child.stop_timeout), (signal.SIGKILL, None)):
            if process.returncode is not None:
                return
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(process.wait(), timeout=wait)
                return
            except TimeoutError:
                continue

    async def inspect(self, instance: Instance) -> InstanceState:
        child = self._children.get(instance.id)
        if child is None:
            return InstanceState.MISSING
        return InstanceState.RUNNING if child.process.returncode is None else InstanceState.EXITED

    async def exit_reason(self, instance: Instance) -> str | None:
        child = self._children.get(instance.id)
        if child is None:
            return "stopped"
        code = child.process.returncode
        return None if code is None else describe_exit(code)

    async def list_instances(self) -> list[Instance]:
        return []  # children do not outlive the proxy: nothing to adopt

    async def cleanup_stopped(self) -> list[str]:
        gone = [i for i, c in self._children.items() if c.process.returncode is not None]
        for instance_id in gone:
            self._forget(instance_id)
        return gone

    async def close(self) -> None:
        children, self._children = list(self._children.values()), {}
        self._ports.clear()
        await asyncio.gather(*(self._terminate(c) for c in children))
