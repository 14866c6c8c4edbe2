"""Config validation: every mistake names its field; the CLI exits non-zero on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


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
