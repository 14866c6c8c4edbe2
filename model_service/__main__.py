"""Run the model service standalone (what a container runs): python -m model_service [--host H] [--port P]."""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from model_service.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    access_log = logging.getLogger("aiohttp.access") if os.environ.get("MODEL_SERVICE_ACCESS_LOG") == "1" else None
    # run_app installs SIGINT/SIGTERM handlers and shuts down gracefully (in-flight requests finish).
    web.run_app(create_app(os.environ), host=args.host, port=args.port, access_log=access_log,
                shutdown_timeout=10.0, print=None)


if __name__ == "__main__":
    main()
