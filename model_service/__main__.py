"""Run the model service standalone (what a container runs):
python -m model_service [--host H] [--port P] [--protocol http|grpc].

`--protocol grpc` (or MODEL_SERVICE_PROTOCOL=grpc) serves the KServe V2 gRPC API on the port instead of HTTP
(model_service/grpc_server.py)."""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from model_service.app import create_app

PROTOCOLS = ("http", "grpc")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        default=os.environ.get("MODEL_SERVICE_PROTOCOL", "http").strip().lower() or "http",
                        help="http (JSON, V2 over HTTP) or grpc (V2 over gRPC); env MODEL_SERVICE_PROTOCOL")
    args = parser.parse_args(argv)
    if args.protocol not in PROTOCOLS:
        parser.error(f"MODEL_SERVICE_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    if args.protocol == "grpc":
        import asyncio

        from model_service.grpc_server import serve

        asyncio.run(serve(args.host, args.port, os.environ))
        return
    access_log = logging.getLogger("aiohttp.access") if os.environ.get("MODEL_SERVICE_ACCESS_LOG") == "1" else None
    # run_app installs SIGINT/SIGTERM handlers and shuts down gracefully (in-flight requests finish).
    web.run_app(create_app(os.environ), host=args.host, port=args.port, access_log=access_log,
                shutdown_timeout=10.0, print=None)


if __name__ == "__main__":
    main()
