"""`python -m proxy --config config.yaml [--host H] [--port P]`.

A bad config prints the offending field and exits 2. SIGTERM/SIGINT stop accepting, drain in-flight
requests for up to server.drain_timeout, stop the instances this proxy started, and exit 0.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from aiohttp import web

from proxy.app import create_app
from proxy.config import ConfigError, load_config
from proxy.logs import configure


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
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    web.run_app(create_app(config), host=config.host, port=config.port, shutdown_timeout=config.drain_timeout,
                handler_cancellation=True, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
