"""What Docker-API engines can do beyond the lifecycle: pause/resume, remove, exec (backends/control.py).

Kept apart from backends/_engine.py (start, stop, inspect, adopt) so that module stays the lifecycle;
DockerBackend and PodmanBackend are built on `EngineOps`. The ownership rule holds here too: nothing
is paused, removed or exec'd into unless it carries this proxy's labels.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import aiodocker

from backends._engine import EngineBackend
from backends.base import BackendError, ContainerSpec, Instance
from backends.control import OutputSink

_STREAMS = {1: "stdout", 2: "stderr"}


class EngineOps(EngineBackend):
    """An EngineBackend that is also Pausable, Removable and Executable."""

    async def _own(self, ref: str) -> dict[str, Any]:
        """The container's inspect JSON; BackendError if it is gone or not this proxy's."""
        info = await self.show(ref)
        if info is None:
            raise BackendError(f"container {ref[:12]} does not exist")
        if not self._is_ours(info):
            raise BackendError(f"refusing to touch container {ref[:12]}: not managed by this proxy")
        return info

    async def pause(self, instance: Instance) -> None:
        async with self._errors():
            info = await self._own(instance.id)
            if not (info.get("State") or {}).get("Paused"):
                await (await self._client()).containers.container(info["Id"]).pause()

    async def resume(self, instance: Instance) -> None:
        async with self._errors():
            info = await self._own(instance.id)
            if (info.get("State") or {}).get("Paused"):
                await (await self._client()).containers.container(info["Id"]).unpause()

    async def remove(self, key: str, spec: ContainerSpec) -> bool:
        async with self._errors():
            info = await self.show(self.name_for(key, spec))
            if info is None or not self._is_ours(info):
                return False
            await self._remove(info["Id"], force=True)
            return True

    async def exec(self, instance: Instance, command: Sequence[str], output: OutputSink) -> int | None:
        async with self._errors():
            info = await self._own(instance.id)
            container = (await self._client()).containers.container(info["Id"])
            run = await container.exec(list(command), stdout=True, stderr=True, stdin=False, tty=False)
            stream = run.start(detach=False)
            try:
                while (message := await stream.read_out()) is not None:
                    await output(_STREAMS.get(message.stream, "stdout"), message.data)
            finally:
                with contextlib.suppress(Exception):
                    await stream.close()
            try:
                code = (await run.inspect()).get("ExitCode")
            except aiodocker.DockerError:
                return None
            return code if isinstance(code, int) else None
