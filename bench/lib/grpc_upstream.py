"""The gRPC upstream of the benchmarks and the tests: grpcio with the standard health service and generic
unary methods (bytes in, bytes out: no protobuf stubs).

    python -m bench.lib.grpc_upstream [PORT]     # listens on PORT, else $PORT (127.0.0.1), like a class's instance

- `/bench.Echo/Echo` answers its request bytes as they are (bench/protocols_h2.py: the cheapest handler, so the
  proxy is what is measured).
- `/test.Echo/Echo` answers the request bytes prefixed with `echo:`, with the metadata it saw (x-forwarded-for,
  x-tenant) and $INSTANCE_ID as trailing metadata (tests/proxy/test_h2.py, tests/engines/test_h2_cluster.py);
  `/test.Echo/Slow` sleeps the request body (seconds, as text; 1 when empty) first.
- `GRPC_TEST_DELAY` seconds pass before the port is bound (a slow start).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _bench_echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


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


SERVICES = {"bench.Echo": {"Echo": _bench_echo}, "test.Echo": {"Echo": _echo, "Slow": _slow}}


def main(port: int) -> None:
    time.sleep(float(os.environ.get("GRPC_TEST_DELAY", "0")))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_identity,
                                                      response_serializer=_identity)
            for name, fn in methods.items()})
        for service, methods in SERVICES.items()))
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"]))
