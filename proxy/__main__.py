"""`python -m proxy --config config.yaml [--host H] [--port P]`.

A bad config prints the offending field and exits 2. SIGTERM/SIGINT stop accepting, drain in-flight
requests for up to server.drain_timeout, stop the instances this proxy started, and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace

from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config
from proxy.logs import configure
from proxy.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy", description="Lazy-start reverse proxy for containers.")
    parser.add_argument("--config", default="config.yaml", help="path to config.yaml")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    config = replace(config, host=args.host or config.host, port=config.port if args.port is None else args.port)
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
    await serve(create_app(config), config.host, config.port, config.drain_timeout)


if __name__ == "__main__":
    sys.exit(main())
