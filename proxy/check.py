"""`python -m proxy --check`: validate the config and probe the backend without binding a port.

Prints a short summary on stdout and exits 0; a config error exits 2 (printed by the caller), an
unreachable backend 1. Images missing locally are reported, not fatal (a start pulls or fails then); so is
a class port the image does not EXPOSE when it EXPOSEs others.
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
        exposed_ports = getattr(backend, "exposed_ports", None)
        for name, klass in config.containers.items():
            if exposed_ports is None or backend.name not in LOCAL_IMAGES:
                print(f"class {name}: image {klass.spec.image}")
                continue
            ports = await exposed_ports(klass.spec.image)
            print(f"class {name}: image {klass.spec.image} {_image_words(ports, klass.spec.port)}")
    finally:
        await backend.close()
    return OK


def _image_words(ports: list[str] | None, port: int) -> str:
    """Present or not; and when the image EXPOSEs ports but not the class's, which (a forgotten or mistyped
    `port` otherwise shows only as a start timeout, `connection refused`)."""
    if ports is None:
        return "not present locally"
    if ports and f"{port}/tcp" not in ports:
        return f"present; it EXPOSEs {', '.join(ports)}, not port {port}"
    return "present"
