"""The process backend: each instance is a local child process, for hosts without a container runtime.

An instance runs the class's `entrypoint` + `command` (with neither: this interpreter running the model
service, `python -m model_service`), with the proxy's environment, then the class's `env`, then `PORT` (a
free port on 127.0.0.1, picked just before the start), `HOST` and `INSTANCE_ID` (a class's `env_file` is already
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
import signal
import socket
import sys
from dataclasses import dataclass

from backends.base import BackendError, ContainerSpec, Instance, InstanceState, Phases

DEFAULT_ARGV = (sys.executable, "-m", "model_service")


@dataclass
class _Child:
    instance: Instance
    process: asyncio.subprocess.Process
    stop_timeout: float


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        for old in [c for c in self._children.values() if c.instance.key == key and c.instance.class_name == spec.name]:
            if old.process.returncode is not None:
                del self._children[old.instance.id]  # the key's last crash, kept for exit_reason until now
        argv = [*(spec.entrypoint or ()), *(spec.command or ())] or list(DEFAULT_ARGV)
        phases = Phases()
        port = free_port(self.host)
        instance_id = f"proc-{next(self._ids)}"
        env = {**os.environ, **spec.env, "PORT": str(port), "HOST": self.host, "INSTANCE_ID": instance_id}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise BackendError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        phases.mark("start")
        instance = phases.on(Instance(key=key, class_name=spec.name, host=self.host, port=port, id=instance_id))
        self._children[instance_id] = _Child(instance, process, spec.stop_timeout)
        return instance

    async def stop(self, instance: Instance) -> None:
        child = self._children.pop(instance.id, None)
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
            del self._children[instance_id]
        return gone

    async def close(self) -> None:
        children, self._children = list(self._children.values()), {}
        await asyncio.gather(*(self._terminate(c) for c in children))
