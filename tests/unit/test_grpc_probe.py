"""proxy/lifecycle/grpc_probe.py's hand-made protobuf: the request it sends and the answers it reads, checked
against the generated grpc.health.v1 messages (grpcio-health-checking)."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from proxy.lifecycle.grpc_probe import _outcome, _request, _status


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService", "x" * 300])
def test_the_request_is_a_health_check_request(service: str) -> None:
    assert _request(service) == framed(health_pb2.HealthCheckRequest(service=service).SerializeToString())


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_the_status_of_an_answer(status: int) -> None:
    answer = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
    assert _status(framed(answer)) == status


def test_outcomes() -> None:
    serving = framed(health_pb2.HealthCheckResponse(status=1).SerializeToString())
    assert _outcome({":status": "200", "grpc-status": "0"}, serving, "").ok
    not_serving = _outcome({":status": "200", "grpc-status": "0"}, framed(b"\x08\x02"), "svc")
    assert not not_serving.ok and not_serving.what == "grpc health of 'svc': NOT_SERVING"
    unknown = _outcome({":status": "200", "grpc-status": "5", "grpc-message": "unknown service"}, b"", "svc")
    assert not unknown.ok and not unknown.final and "NOT_FOUND (unknown service)" in unknown.what
    assert _outcome({":status": "200", "grpc-status": "12"}, b"", "").final
    assert not _outcome({":status": "404"}, b"", "").ok
    malformed = _outcome({":status": "200", "grpc-status": "0"}, framed(b"\x0a\x01x"), "")
    assert not malformed.ok and "malformed" in malformed.what


def test_readiness_grpc_in_config() -> None:
    from proxy.config.schema import ConfigError, parse_config

    def readiness(value: object) -> object:
        return parse_config({"containers": {"g": {"image": "x", "readiness": value}}}).containers["g"].readiness

    assert readiness("grpc").kind == "grpc"  # type: ignore[attr-defined]
    named = readiness({"kind": "grpc", "service": "inference.GRPCInferenceService"})
    assert named.describe() == "gRPC health check of 'inference.GRPCInferenceService'"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as wrong:
        readiness({"kind": "tcp", "service": "x"})
    assert wrong.value.field == "containers.g.readiness.service" and "only for kind grpc" in wrong.value.reason
