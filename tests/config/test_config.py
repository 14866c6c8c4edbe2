"""Config validation: every mistake names its field; the CLI exits non-zero on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config.schema import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def minimal(**containers_extra):
    return {"containers": {"w": {"image": "x", **containers_extra}},
            "routes": [{"path": "/api/{tail:.*}", "container": "w", "key": "k"}]}


def test_shipped_configs_parse():
    config = load_config(ROOT / "config.yaml")
    assert config.backend.type == "stub"
    assert [r.mode for r in config.routes].count("lb") == 1
    for example in (ROOT / "examples").glob("*.yaml"):
        assert load_config(example).routes


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: c["containers"]["w"].update(sleep_after="soon"), "containers.w.sleep_after"),
        (lambda c: c["containers"]["w"].update(instance_type="huge"), "containers.w.instance_type"),
        (lambda c: c["containers"]["w"].update(instance_type={"memory": "1GiB"}), "containers.w.instance_type"),
        (lambda c: c["containers"]["w"].update(instance_type={"memory": "1GiB", "cpus": -1}),
         "containers.w.instance_type.cpus"),
        (lambda c: c["containers"]["w"].update(port=70000), "containers.w.port"),
        (lambda c: c["containers"]["w"].update(keepalive="* * * * 99"), "containers.w.keepalive.schedule"),
        (lambda c: c["containers"]["w"].update(cron=[{"schedule": "*/5 * * * *", "key": "../x"}]),
         "containers.w.cron[0].key"),
        (lambda c: c["containers"]["w"].update(readiness={"path": "health"}), "containers.w.readiness.path"),
        (lambda c: c["containers"]["w"].update(colour="blue"), "containers.w.colour"),
        (lambda c: c["routes"][0].update(container="nope"), "routes[0].container"),
        (lambda c: c["routes"][0].update(mode="sometimes"), "routes[0].mode"),
        (lambda c: c["routes"][0].update(key="{id}"), "routes[0].key"),
        (lambda c: c.update(backend={"type": "kubernetes"}), "backend.type"),
        (lambda c: c.update(server={"max_body_size": "lots"}), "server.max_body_size"),
        (lambda c: c.update(hooks={"webhooks": [{"url": "ftp://x"}]}), "hooks.webhooks[0].url"),
        (lambda c: c.update(pricing={"vcpu_second": "free"}), "pricing.vcpu_second"),
        (lambda c: c.update(containers={}), "containers"),
        # strict types: no silent coercion
        (lambda c: c.update(backend={"reuse_stopped": "false"}), "backend.reuse_stopped"),
        (lambda c: c.update(backend={"type": "docker", "docker": {"reuse_stopped": "false"}}),
         "backend.docker.reuse_stopped"),
        (lambda c: c.update(server={"host": 123}), "server.host"),
        (lambda c: c.update(server={"port": "8787"}), "server.port"),
        (lambda c: c.update(logging={"requests": 1}), "logging.requests"),
        (lambda c: c.update(pricing={"vcpu_second": True}), "pricing.vcpu_second"),
        (lambda c: c["containers"]["w"].update(instance_type={"memory": "1GiB", "cpus": True}),
         "containers.w.instance_type.cpus"),
        # unknown fields, at every level
        (lambda c: c.update(colour="blue"), "colour"),
        (lambda c: c.update(server={"hots": "x"}), "server.hots"),
        (lambda c: c.update(backend={"type": "docker", "docker": {"sock": "x"}}), "backend.docker.sock"),
        (lambda c: c.update(backend={"stub": {}}), "backend.stub"),
        (lambda c: c["containers"]["w"].update(readiness={"path": "/", "every": 1}), "containers.w.readiness.every"),
        (lambda c: c["containers"]["w"].update(instance_type={"memory": "1GiB", "cpus": 1, "gpus": 1}),
         "containers.w.instance_type.gpus"),
        (lambda c: c["containers"]["w"].update(cron=[{"schedule": "30s", "args": []}]), "containers.w.cron[0].args"),
        (lambda c: c["routes"][0].update(prefix="/x"), "routes[0].prefix"),
        (lambda c: c.update(hooks={"webhooks": [{"url": "http://x", "method": "PUT"}]}),
         "hooks.webhooks[0].method"),
        # durations, sizes, ranges
        (lambda c: c["containers"]["w"].update(sleep_after="-5s"), "containers.w.sleep_after"),
        (lambda c: c.update(server={"drain_timeout": -1}), "server.drain_timeout"),
        (lambda c: c["containers"]["w"].update(start_timeout=0), "containers.w.start_timeout"),
        (lambda c: c["containers"]["w"].update(readiness={"interval": "0ms"}), "containers.w.readiness.interval"),
        (lambda c: c.update(server={"max_body_size": 0}), "server.max_body_size"),
        (lambda c: c.update(server={"max_body_size": "0MiB"}), "server.max_body_size"),
        (lambda c: c["containers"]["w"].update(instance_type={"memory": "1MiB", "cpus": 1}),
         "containers.w.instance_type.memory"),
        (lambda c: c.update(server={"port": 65536}), "server.port"),
        (lambda c: c.update(server={"port": -1}), "server.port"),
        (lambda c: c["containers"]["w"].update(port=0), "containers.w.port"),
        (lambda c: c["containers"]["w"].update(max_instances=0), "containers.w.max_instances"),
        (lambda c: c.update(metrics={"key_label_limit": -1}), "metrics.key_label_limit"),
        (lambda c: c.update(hooks={"webhooks": [{"url": "http://x", "retries": 11}]}), "hooks.webhooks[0].retries"),
        (lambda c: c.update(pricing={"memory_gib_second": -0.1}), "pricing.memory_gib_second"),
        # schedules
        (lambda c: c["containers"]["w"].update(cron=[{"schedule": "61 * * * *"}]), "containers.w.cron[0].schedule"),
        (lambda c: c["containers"]["w"].update(cron=[{"key": "k"}]), "containers.w.cron[0].schedule"),
        (lambda c: c["containers"]["w"].update(keepalive=0), "containers.w.keepalive.schedule"),
        (lambda c: c["containers"]["w"].update(keepalive={"schedule": "30s", "keys": ["../x"]}),
         "containers.w.keepalive.keys[0]"),
        # routes: placeholders and modes
        (lambda c: c["routes"][0].update(upstream_path="/x/{nope}"), "routes[0].upstream_path"),
        (lambda c: c["routes"][0].update(path="/a/{id}", key="{id}", mode="lb"), "routes[0].key"),
        (lambda c: c["routes"][0].update(key="../etc"), "routes[0].key"),
        (lambda c: c["routes"][0].update(instances=3), "routes[0].instances"),
        (lambda c: c["routes"][0].update(path="api"), "routes[0].path"),
        (lambda c: c["routes"].append({"container": "w"}), "routes[1].path"),
        (lambda c: c.update(routes={"path": "/"}), "routes"),
        # names, env, sockets, events
        (lambda c: c["containers"].update({"bad name": {}}), "containers.bad name"),
        (lambda c: c["containers"]["w"].update(env={"1BAD": "x"}), "containers.w.env.1BAD"),
        (lambda c: c["containers"]["w"].update(env={"A": [1]}), "containers.w.env.A"),
        (lambda c: c["containers"]["w"].update(entrypoint=[1]), "containers.w.entrypoint"),
        (lambda c: c.update(backend={"proxy_id": "a b"}), "backend.proxy_id"),
        (lambda c: c.update(backend={"type": "podman", "podman": {"socket": "/run/x.sock"}}), "backend.podman.socket"),
        (lambda c: c.update(backend={"socket": "/run/x.sock"}), "backend.socket"),
        (lambda c: c.update(logging={"level": "loud"}), "logging.level"),
        (lambda c: c.update(hooks={"webhooks": [{"url": "http://x", "events": ["boot"]}]}),
         "hooks.webhooks[0].events[0]"),
        (lambda c: c["containers"]["w"].update(readiness=5), "containers.w.readiness"),
    ],
)
def test_errors_name_the_field(mutate, field):
    raw = minimal()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(field + ": ")


def test_units_and_defaults():
    config = parse_config(minimal(sleep_after="2m", start_timeout="500ms", instance_type={"memory": "512MiB",
                                                                                             "cpus": 0.5}))
    cls = config.containers["w"]
    assert cls.sleep_after == 120 and cls.start_timeout == 0.5
    assert cls.spec.resources.memory_bytes == 512 * 2**20 and cls.spec.resources.cpus == 0.5
    assert config.max_body_size == 10 * 2**20 and config.routes[0].mode == "start"


def run_cli(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "proxy", "--config", str(path), "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_bad_config_exits_nonzero_naming_the_field(tmp_path):
    raw = minimal(sleep_after="whenever")
    result = run_cli(tmp_path, yaml.safe_dump(raw))
    assert result.returncode == 2
    assert "containers.w.sleep_after" in result.stderr and "duration" in result.stderr


def test_cli_invalid_yaml_and_missing_file(tmp_path):
    result = run_cli(tmp_path, "containers: [unclosed\n")
    assert result.returncode == 2 and "invalid YAML" in result.stderr
    missing = subprocess.run([sys.executable, "-m", "proxy", "--config", str(tmp_path / "none.yaml")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_request_log_switch():
    assert parse_config(minimal()).log_requests is True
    raw = minimal()
    raw["logging"] = {"requests": False}
    assert parse_config(raw).log_requests is False
    raw["logging"] = {"requests": "sometimes"}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == "logging.requests"


def test_every_problem_is_reported_first_one_as_the_field():
    raw = minimal()
    raw["server"] = {"host": 1, "port": -1}
    raw["routes"][0]["mode"] = "x"
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert [f for f, _ in err.value.problems] == ["server.host", "server.port", "routes[0].mode"]
    assert err.value.field == "server.host" and str(err.value).count("\n") == 2


def test_empty_sections_and_defaults():
    raw = minimal()
    raw.update(server=None, backend=None, logging={"level": "INFO"})
    config = parse_config(raw)
    assert (config.host, config.port, config.log_level, config.drain_timeout) == ("127.0.0.1", 8787, "info", 30.0)
    route = config.routes[0]
    assert (route.name, route.upstream_path, route.instances) == ("/api/{tail:.*}", None, 1)
    raw["routes"][0].pop("key")
    assert parse_config(raw).routes[0].key == "w"
    cls = parse_config(minimal(env={"A": True, "B": 1.5}, entrypoint="a b", keepalive="*/2 * * * *")).containers["w"]
    assert cls.spec.env == {"PORT": "8080", "A": "true", "B": "1.5"} and cls.spec.entrypoint == ("a", "b")
    assert parse_config(minimal(port=9000, env={"PORT": "7"})).containers["w"].spec.env == {"PORT": "7"}  # env wins
    assert cls.keepalive is not None and cls.keepalive.schedule.cron == "*/2 * * * *" and cls.keepalive.keys == ()
    assert cls.readiness.interval == 0.005 and cls.instance_type == "dev" and cls.disk_gb == 2.0


def test_backend_sections_and_the_flat_form():
    raw = minimal()
    raw["backend"] = {"type": "podman", "proxy_id": "p1", "podman": {"socket": "unix:///tmp/p.sock"},
                      "docker": {"reuse_stopped": False}}
    backend = parse_config(raw).backend
    assert backend.options == {"socket": "unix:///tmp/p.sock", "reuse_stopped": True, "network": None}
    assert backend.socket == "unix:///tmp/p.sock" and backend.reuse_stopped is True
    raw["backend"] = {"type": "docker", "socket": "tcp://h:2375", "reuse_stopped": False}  # the older flat form
    backend = parse_config(raw).backend
    assert backend.options == {"socket": "tcp://h:2375", "reuse_stopped": False, "network": None}
    raw["backend"] = {"proxy_id": "x", "reuse_stopped": False}  # stub: flat values still readable
    backend = parse_config(raw).backend
    assert backend.options == {} and backend.reuse_stopped is False


def test_backend_is_built_from_its_section():
    from backends import create_backend

    raw = minimal()
    raw["backend"] = {"type": "docker", "proxy_id": "p2", "docker": {"socket": "unix:///tmp/d.sock",
                                                                     "reuse_stopped": False}}
    config = parse_config(raw)
    backend = create_backend(config.backend.type, proxy_id=config.backend.proxy_id, **config.backend.options)
    assert (backend.name, backend.socket, backend.proxy_id, backend.reuse_stopped) == \
        ("docker", "unix:///tmp/d.sock", "p2", False)


def test_engine_sections_are_engine_options():
    """Every field of backend.docker/podman/swarm is an EngineOptions field with the same default (declared once)."""
    from dataclasses import fields

    from backends.options import EngineOptions
    from proxy.config.backend import DockerOptions, PodmanOptions, SwarmOptions

    declared = {f.name: f.default for f in fields(EngineOptions)}
    for section in (DockerOptions, PodmanOptions, SwarmOptions):
        for name, field in section.model_fields.items():
            assert name in declared and field.default == declared[name], f"{section.__name__}.{name}"
    with pytest.raises(TypeError, match="nope"):
        EngineOptions.of(nope=1)


def test_config_is_a_dataclass_for_replace():
    from dataclasses import replace

    config = replace(parse_config(minimal()), host="0.0.0.0", port=0)
    assert (config.host, config.port) == ("0.0.0.0", 0)
