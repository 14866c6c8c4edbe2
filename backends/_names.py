"""Container names for keys, and the way around a name the runtime will not give back.

Each key has one derived name, so a restart finds its stopped container again. dockerd can leave a
container "Removal In Progress" or `dead` (a race when it shuts down while a container starts; a root
filesystem it cannot remove): the name stays taken and every create answers 409. Rather than losing
the key for the rest of the proxy's life, the key moves on to `{name}-g{N}` and the stuck container is
remembered, reported, and removed later by `EngineBackend.cleanup_stuck` (the reconciler calls it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re

log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^a-z0-9_.-]+")
MAX_GENERATION = 8  # a key that needs more fresh names than this has a runtime problem, not a stuck name
STUCK_STATUSES = ("removing", "dead")


def _sanitise(s: str, limit: int) -> str:
    s = _SAFE.sub("-", s.lower()).strip("-.") or "x"
    return s[:limit].rstrip("-.") or "x"


def container_name(proxy_id: str, cls: str, key: str) -> str:
    """`lp-{class}-{key}-{hash}`: readable, only [a-z0-9_.-], bounded, and collision-free via the hash
    of the exact (proxy_id, class, key) triple (two keys that sanitise alike still differ)."""
    digest = hashlib.sha256(json.dumps([proxy_id, cls, key]).encode()).hexdigest()[:12]
    return f"lp-{_sanitise(cls, 40)}-{_sanitise(key, 64)}-{digest}"


_DNS = re.compile(r"[^a-z0-9]+")


def service_name(proxy_id: str, cls: str, key: str) -> str:
    """`lp-{class}-{key}-{hash}` within swarm's rule for service names (a DNS label: [a-z0-9-], at most 63
    characters), collision-free like `container_name`."""
    digest = hashlib.sha256(json.dumps([proxy_id, cls, key]).encode()).hexdigest()[:12]
    part = [_DNS.sub("-", s.lower()).strip("-")[:limit].strip("-") or "x" for s, limit in ((cls, 16), (key, 28))]
    return f"lp-{part[0]}-{part[1]}-{digest}"


class Names:
    """The current name of each key's container, and the stuck containers left behind."""

    def __init__(self, proxy_id: str) -> None:
        self.proxy_id = proxy_id
        self._generation: dict[str, int] = {}
        self.stuck: dict[str, str] = {}  # container id -> its name, until it is removed

    def current(self, cls: str, key: str) -> str:
        base = container_name(self.proxy_id, cls, key)
        generation = self._generation.get(base, 0)
        return f"{base}-g{generation}" if generation else base

    def move_on(self, cls: str, key: str, stuck_id: str, why: str) -> str | None:
        """Give up the current name (held by `stuck_id`); the next one, or None past MAX_GENERATION."""
        old = self.current(cls, key)
        self.stuck[stuck_id] = old
        base = container_name(self.proxy_id, cls, key)
        generation = self._generation.get(base, 0) + 1
        if generation > MAX_GENERATION:
            return None
        self._generation[base] = generation
        new = self.current(cls, key)
        log.warning("container %s (%s) is stuck: %s; key %r moves on to %s", old, stuck_id[:12], why, key, new)
        return new
