"""The addressing rule of Docker-API engines (backends/_address.py), on inspect JSON as the engines return it."""

from __future__ import annotations

from backends.base import ContainerSpec
from backends.docker import DockerBackend
from proxy.config.schema import parse_config
from tests.conftest import base_config

SPEC = ContainerSpec(name="svc", image="img", port=8080)


def inspect(ports: dict, networks: dict, labels: dict | None = None) -> dict:
    return {"Config": {"Labels": labels or {}}, "NetworkSettings": {"Ports": ports, "Networks": networks}}


def test_published_mode_binds_the_port_and_network_mode_joins_the_network_instead():
    published = DockerBackend(socket="unix:///nowhere").create_config("k", SPEC)
    assert published["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert "NetworkingConfig" not in published and "NetworkMode" not in published["HostConfig"]
    on_net = DockerBackend(socket="unix:///nowhere", network="apps").create_config("k", SPEC)
    assert "PortBindings" not in on_net["HostConfig"] and on_net["HostConfig"]["NetworkMode"] == "apps"
    assert on_net["NetworkingConfig"] == {"EndpointsConfig": {"apps": {}}}
    assert on_net["Labels"]["proxy.port"] == "8080"
    assert on_net["Labels"]["proxy.spec"] != published["Labels"]["proxy.spec"]


def test_the_address_is_the_published_port_or_the_ip_on_the_network_at_the_labelled_port():
    info = inspect({"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]},
                   {"apps": {"IPAddress": "172.18.0.5"}}, {"proxy.port": "8080"})
    assert DockerBackend().address.found(info) == ("127.0.0.1", 49153)
    assert DockerBackend(network="apps").address.found(info) == ("172.18.0.5", 8080)
    assert DockerBackend(network="other").address.found(info) is None
    unlabelled = inspect({"9000/tcp": [{"HostPort": "40000"}], "8080/udp": None}, {})  # created before the label
    assert DockerBackend().address.found(unlabelled) == ("127.0.0.1", 40000)


def test_backend_network_reaches_the_constructor_options():
    config = parse_config(base_config("podman", "img") | {"backend": {"type": "podman", "podman": {"network": "apps"}}})
    assert config.backend.options["network"] == "apps"
    published = parse_config(base_config("docker", "img") | {"backend": {"type": "docker"}})
    assert published.backend.options["network"] is None
