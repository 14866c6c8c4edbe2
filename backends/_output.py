"""What a container printed last, for a start or an instance that died: the app's own words (`boom:
DATABASE_URL is not set`, `htttpd: applet not found`) go into the reason, next to the exit code, so a new
user need not find the container and run `docker logs` on it."""

from __future__ import annotations

import aiodocker

TAIL_LINES = 3  # the lines read; the reason keeps at most MAX_CHARS of their end
MAX_CHARS = 300


async def last_output(docker: aiodocker.Docker, cid: str) -> str:
    """The container's last lines (stdout and stderr) joined by ` | `; "" when it printed nothing or the
    runtime cannot say (a removed container)."""
    try:
        lines = await docker.containers.container(cid).log(stdout=True, stderr=True, tail=TAIL_LINES)
    except aiodocker.DockerError:
        return ""
    return " | ".join(" ".join(line.split()) for line in lines if line.strip())[-MAX_CHARS:]
