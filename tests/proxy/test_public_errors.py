"""Public error bodies: plain words and the request id for the client, the internal detail in the log.

`errors.detail: public` (the default) answers a failed start with "the app could not be started"; the
exception text, socket path or exit code goes to one JSON log line under the same request id. `full`
answers with the detail. Names, statuses and Retry-After are the same either way.
"""

from __future__ import annotations

import pytest
from yarl import URL
from structlog.testing import capture_logs

from backends.docker import DockerBackend
from proxy.app import create_app
from proxy.config.schema import parse_config
from tests.conftest import base_config, proxy_server

BROKEN = {"stub": {"image": "stub:no_such_module:create_app"}, "process": {"command": ["/no/such/program"]}}
DETAIL = {"stub": "no_such_module", "process": "/no/such/program"}


@pytest.fixture(params=["stub", "process"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def refused(logs: list[dict[str, object]], rid: str) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == "refused" and e.get("request_id") == rid]


async def test_a_failed_start_says_so_in_plain_words_and_logs_the_detail(make_proxy, backend_kind):
    h = await make_proxy(svc=BROKEN[backend_kind])
    with capture_logs() as logs:
        resp = await h.client.get("/s/api/health", headers={"X-Request-Id": "start-1"})
        body = await resp.json()
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1 and resp.headers["X-Request-Id"] == "start-1"
    assert body == {"error": "start failed", "reason": "the app could not be started", "status": 503, "key": "shared",
                    "request_id": "start-1"}
    [line] = refused(logs, "start-1")
    assert DETAIL[backend_kind] in str(line["reason"]) and line["error"] == "start failed"
    assert line["log_level"] == "warning"


async def test_errors_detail_full_answers_with_the_detail(make_proxy, backend_kind):
    h = await make_proxy(svc=BROKEN[backend_kind], config={"errors": {"detail": "full"}})
    resp = await h.client.get("/s/api/health")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "start failed" and DETAIL[backend_kind] in body["reason"]
    assert body["request_id"] == resp.headers["X-Request-Id"]


async def test_client_input_errors_keep_their_reason(make_proxy, backend_kind):
    h = await make_proxy()
    resp = await h.client.get(URL("/k/a%20b/x", encoded=True))
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid key" and body["reason"].startswith("key may contain"), body
    resp = await h.client.post("/s/debug/echo", data=b"x" * (2 * 2**20))  # max_body_size is 1 MiB
    assert resp.status == 413 and "max_body_size" in (await resp.json())["reason"]


@pytest.mark.parametrize("detail", ["public", "full"])
async def test_an_unreachable_docker_socket_names_no_socket_path(aiohttp_client, tmp_path, detail):
    socket = f"unix://{tmp_path}/no-docker.sock"
    raw = base_config("docker", "lazy-proxy/model-service:latest")
    raw["backend"] = {"type": "docker", "docker": {"socket": socket}}
    raw["errors"] = {"detail": detail}
    app = create_app(parse_config(raw), DockerBackend(socket=socket, proxy_id="t-datapath-nosock"))
    client = await aiohttp_client(proxy_server(app))
    with capture_logs() as logs:
        resp = await client.get("/s/api/health")
        body = await resp.json()
    assert resp.status == 503 and body["error"] == "start failed" and int(resp.headers["Retry-After"]) >= 1
    [line] = refused(logs, body["request_id"])
    assert str(tmp_path) in str(line["reason"])
    if detail == "public":
        assert body["reason"] == "the container runtime is unavailable" and str(tmp_path) not in str(body)
    else:
        assert str(tmp_path) in body["reason"]
    assert (await client.get("/health")).status == 200
