"""`python -m proxy --config config.yaml [--host H] [--port P] [--admin-port A]`; `python -m proxy ctl ...`.

`ctl` is the admin API's command line (proxy/ctl.py).

A bad config prints the offending field and exits 2. SIGTERM/SIGINT stop accepting, drain in-flight
requests for up to server.drain_timeout, stop the instances this proxy started, and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace

from proxy.admin import create_admin_app
from proxy.app import PROXY, create_app
from proxy.config import Config, ConfigError, load_config
from proxy.ctl import main as ctl
from proxy.logs import configure
from proxy.server import serve


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        return ctl(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m proxy", description="Lazy-start reverse proxy for containers.")
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    parser.add_argument("--admin-port", type=int, help="admin listen port (overrides admin.port)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    config = replace(config, host=args.host or config.host, port=config.port if args.port is None else args.port)
    if args.admin_port is not None:
        config = replace(config, admin=config.admin.model_copy(update={"port": args.admin_port}))
    configure(config.log_level)
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # platforms without uvloop run on asyncio's loop
        pass
    run(_serve(config))
    return 0


async def _serve(config: Config) -> None:
    app = create_app(config)
    admin = None
    if config.admin.enabled:
        admin = (create_admin_app(app[PROXY]), config.admin.host, config.admin.port)
    await serve(app, config.host, config.port, config.drain_timeout, admin)


if __name__ == "__main__":
    sys.exit(main())
