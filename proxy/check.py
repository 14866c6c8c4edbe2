"""`python -m proxy --check`: validate the config and probe the backend without binding a port.

Prints a short summary on stdout and exits 0; a config error exits 2 (printed by the caller), an
unreachable backend 1. Images missing locally are reported, not fatal (a start pulls or fails then).
"""

from __future__ import annotations

from backends import create_backend
from proxy import __version__
from proxy.banner import plural
from proxy.config.schema import Config
from proxy.observe.ready import ping

OK, UNREACHABLE = 0, 1
LOCAL_IMAGES = ("docker", "podman")  # runtimes whose images live on the daemon (a swarm's live in a registry)


async def check(config: Config) -> int:
    """Print what the config sets up and whether the backend answers; the exit code."""
    print(f"lazy-proxy {__version__}: config ok: listen {config.host}:{config.port}"
          + (f", admin {config.admin.host}:{config.admin.port}" if config.admin.enabled else ", no admin listener")
          + f", {plural(len(config.containers), 'class')}, {plural(len(config.routes), 'route')}")
    backend = create_backend(config.backend.type, proxy_id=config.backend.proxy_id, **config.backend.options)
    try:
        unreachable = await ping(backend)
        if unreachable is not None:
            print(f"backend {backend.name}: unreachable: {unreachable}")
            return UNREACHABLE
        print(f"backend {backend.name}: ok")
        has_image = getattr(backend, "has_image", None)
        for name, klass in config.containers.items():
            if has_image is None or backend.name not in LOCAL_IMAGES:
                print(f"class {name}: image {klass.spec.image}")
                continue
            present = await has_image(klass.spec.image)
            print(f"class {name}: image {klass.spec.image} {'present' if present else 'not present locally'}")
    finally:
        await backend.close()
    return OK
