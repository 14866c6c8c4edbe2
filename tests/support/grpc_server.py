"""A tiny gRPC server for the HTTP/2 tests: the standard health service and one generic unary method.

    python -m tests.support.grpc_server          # listens on $PORT (127.0.0.1), like a class's instance

`/test.Echo/Echo` answers the request bytes prefixed with `echo:` and the metadata it saw (x-forwarded-for,
x-tenant) as trailing metadata; `/test.Echo/Slow` sleeps `slow` seconds (the request body, as text) first.
`GRPC_TEST_DELAY` seconds pass before the port is bound (a slow start).
"""

from __future__ import annotations

import os
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    seen = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-seen-forwarded-for", str(seen.get("x-forwarded-for", ""))),
                                   ("x-seen-tenant", str(seen.get("x-tenant", ""))),
                                   ("x-seen-instance", os.environ.get("INSTANCE_ID", ""))))
    return b"echo:" + request


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(float(request.decode() or "1"))
    return b"slept"


def _identity(data: bytes) -> bytes:
    return data


def main() -> None:
    time.sleep(float(os.environ.get("GRPC_TEST_DELAY", "0")))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_identity,
                                                          response_serializer=_identity)
                for name, fn in (("Echo", _echo), ("Slow", _slow))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
