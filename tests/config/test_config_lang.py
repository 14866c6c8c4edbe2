"""Config as compose and Go write it: `${VAR}` interpolation, shell-split commands, Go durations, cron field counts,
the compose class options (volumes, ports, user, labels, env_file) and the derived `backend.proxy_id`.

Pure parsing: no daemon. The engines' side of the class options is tests/engines/test_compose_options.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends._api import held_elsewhere, owner
from backends.base import LABEL_OWNER, Volume
from proxy.config.schema import ConfigError, derived_proxy_id, load_config, parse_config
from proxy.config.cluster import Cluster
from proxy.config.compose import parse_env_file, parse_volume
from proxy.config.interpolate import interpolate
from proxy.config.units import parse_duration, parse_schedule

ROOT = Path(__file__).resolve().parents[2]


def sub(text: str, **env: str) -> str:
    return str(interpolate({"v": text}, env).data["v"])


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize("text, env, expected", [
    ("${A}", {"A": "x"}, "x"),
    ("$A/$B", {"A": "x", "B": "y"}, "x/y"),
    ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
    ("${A}", {}, ""),
    ("${A:-d}", {}, "d"), ("${A:-d}", {"A": ""}, "d"), ("${A:-d}", {"A": "x"}, "x"),
    ("${A-d}", {}, "d"), ("${A-d}", {"A": ""}, ""), ("${A-d}", {"A": "x"}, "x"),
    ("${A:?m}", {"A": "x"}, "x"), ("${A?m}", {"A": ""}, ""),
    ("${A:+alt}", {"A": "x"}, "alt"), ("${A:+alt}", {"A": ""}, ""), ("${A+alt}", {"A": ""}, "alt"),
    ("${A+alt}", {}, ""),
    ("$$", {}, "$"), ("$${A}", {"A": "x"}, "${A}"), ("a$$b", {}, "a$b"),
    ("${A:-${B:-z}}", {}, "z"), ("${A:-${B}}", {"B": "b"}, "b"),
    ("${A:-a b: c}", {}, "a b: c"),
    ("no dollar", {}, "no dollar"),
])
def test_interpolation_forms(text: str, env: dict[str, str], expected: str) -> None:
    assert sub(text, **env) == expected


@pytest.mark.parametrize("text, env, reason", [
    ("${A:?set A please}", {}, "required variable A is not set: set A please"),
    ("${A:?set A please}", {"A": ""}, "required variable A is empty: set A please"),
    ("${A?gone}", {}, "required variable A is not set: gone"),
    ("${A:?}", {}, "required variable A is not set: missing a value"),
    ("${A", {}, "no closing brace"),
    ("${1A}", {}, "invalid interpolation ${1A}"),
    ("cost $5", {}, "write $$ for a literal $"),
])
def test_interpolation_errors_name_the_field(text: str, env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        interpolate({"containers": {"w": {"env": {"T": text}}}}, env)
    assert info.value.field == "containers.w.env.T" and reason in info.value.reason


def test_interpolation_leaves_keys_and_non_strings_and_records_what_changed() -> None:
    result = interpolate({"${K}": 1, "l": ["$A", "plain", True], "n": None}, {"A": "a", "K": "k"})
    assert result.data == {"${K}": 1, "l": ["a", "plain", True], "n": None}
    assert result.paths == {("l", 0)}
    assert interpolate({"a": "$X ${Y} ${X}"}, {}).unset == ["X", "Y"]


def write(tmp_path: Path, config: dict[str, Any] | str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def test_load_config_interpolates_and_types_numbers_where_a_field_wants_them(tmp_path: Path) -> None:
    path = write(tmp_path, """
server: {port: "${PORT:-9999}", drain_timeout: "${DRAIN:-1h30m}"}
logging: {requests: "${REQS}"}
containers:
  w:
    image: "registry/app:${TAG-latest}"
    env: {TOKEN: "${TOKEN}", LIT: "$$HOME", N: "${N}"}
    max_instances: ${MAX}
""")
    config = load_config(path, {"TOKEN": "0123", "REQS": "false", "N": "5", "MAX": "7"})
    assert config.port == 9999 and config.drain_timeout == 5400 and config.log_requests is False
    spec = config.containers["w"].spec
    assert spec.image == "registry/app:latest" and config.containers["w"].max_instances == 7
    assert spec.env == {"PORT": "8080", "TOKEN": "0123", "LIT": "$HOME", "N": "5"}  # strings stay the text they were


def test_a_missing_required_variable_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, {"containers": {"w": {"env": {"S": "${LP_TEST_SECRET:?set it in .env}"}}}})
    env = {k: v for k, v in os.environ.items() if k != "LP_TEST_SECRET"}
    proc = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "config error: containers.w.env.S: required variable LP_TEST_SECRET is not set: set it in .env"]


# ---------------------------------------------------------------- shell splitting


@pytest.mark.parametrize("text, argv", [
    ("sh -c 'echo hi; sleep 1'", ("sh", "-c", "echo hi; sleep 1")),
    ('python -m http.server "$PORT"', ("python", "-m", "http.server", "$PORT")),
    (r"echo a\ b", ("echo", "a b")),
    ("  spaced   words ", ("spaced", "words")),
])
def test_command_strings_split_like_a_shell(text: str, argv: tuple[str, ...]) -> None:
    config = parse_config({"containers": {"w": {"command": text, "entrypoint": text,
                                                "cron": [{"schedule": "30s", "command": text}]}}})
    klass = config.containers["w"]
    assert klass.spec.command == argv and klass.spec.entrypoint == argv and klass.cron[0].command == argv


@pytest.mark.parametrize("where", ["command", "cron"])
def test_unbalanced_quotes_are_a_config_error(where: str) -> None:
    section: dict[str, Any] = {"command": "sh -c 'echo"} if where == "command" else {
        "cron": [{"schedule": "30s", "entrypoint": 'a "b'}]}
    with pytest.raises(ConfigError) as info:
        parse_config({"containers": {"w": section}})
    field = "containers.w.command" if where == "command" else "containers.w.cron[0].entrypoint"
    assert info.value.field == field and "no closing quotation" in info.value.reason


# ---------------------------------------------------------------- durations and schedules


@pytest.mark.parametrize("text, seconds", [
    ("1h30m", 5400), ("1m30s", 90), ("1.5h", 5400), ("500ms", 0.5), ("2h45m10s", 9910), ("300us", 0.0003),
    ("1s500ms", 1.5), (".5s", 0.5), ("30", 30), ("2.5", 2.5), ("30s", 30), ("5m", 300), ("30 s", 30), (" 1h ", 3600),
    (0, 0), (7, 7), (0.25, 0.25),
])
def test_go_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1h30", "1d", "h", "1 h 30 m", "", "abc", "5m-1s"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a duration like 30, '500ms', '1h30m'"):
        parse_duration(text)


def test_durations_in_the_config_accept_go_forms_and_errors_name_the_field() -> None:
    config = parse_config({"server": {"upstream_timeout": "1m30s"}, "containers": {"w": {"sleep_after": "1h30m"}}})
    assert config.upstream_timeout == 90 and config.containers["w"].sleep_after == 5400
    with pytest.raises(ConfigError) as info:
        parse_config({"containers": {"w": {"sleep_after": "1h30"}}})
    assert info.value.field == "containers.w.sleep_after" and "'1h30m'" in info.value.reason


@pytest.mark.parametrize("text, count", [("*/5 * * *", 4), ("0 */5 * * * *", 6), ("1 2", 2)])
def test_a_cron_with_the_wrong_field_count_is_reported_as_such(text: str, count: int) -> None:
    with pytest.raises(ValueError, match=f"a cron expression has 5 fields, got {count}"):
        parse_schedule(text)
    with pytest.raises(ConfigError) as info:
        parse_config({"containers": {"w": {"keepalive": text}}})
    assert info.value.field == "containers.w.keepalive.schedule"
    assert f"a cron expression has 5 fields, got {count}" in info.value.reason


def test_schedules_still_take_crons_and_intervals() -> None:
    assert parse_schedule("*/2 * * * *").cron == "*/2 * * * *"
    assert parse_schedule("1m30s").every == 90 and parse_schedule(45).every == 45


# ---------------------------------------------------------------- volumes, ports, user, labels, env_file


@pytest.mark.parametrize("text, volume", [
    ("data:/var/lib/data", Volume("data", "/var/lib/data")),
    ("data:/var/lib/data:ro", Volume("data", "/var/lib/data", True)),
    ("/srv/site:/usr/share/html:rw", Volume("/srv/site", "/usr/share/html")),
    ("./site:/html:ro", Volume("/base/dir/site", "/html", True)),
    ("../up/x:/x", Volume("/base/up/x", "/x")),
    ("sub/dir:/x", Volume("/base/dir/sub/dir", "/x")),
])
def test_volume_short_syntax(text: str, volume: Volume) -> None:
    assert parse_volume(text, Path("/base/dir")) == volume


def test_volume_tilde_is_the_home_directory() -> None:
    assert parse_volume("~/x:/x", Path("/b")).source == os.path.expanduser("~/x")


@pytest.mark.parametrize("entry, reason", [
    ("/data", "expected 'SOURCE:TARGET[:ro|rw]'"),
    ("a:b:c:d", "expected 'SOURCE:TARGET[:ro|rw]'"),
    ("data:/x:rx", "mode must be ro or rw"),
    ("data:rel", "the container path must be absolute"),
    ("bad name:/x", "invalid volume name"),
    ({"type": "bind"}, "expected 'SOURCE:TARGET[:ro|rw]'"),
])
def test_malformed_volumes_name_the_entry(entry: Any, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"backend": {"type": "docker"}, "containers": {"w": {"volumes": ["ok:/ok", entry]}}})
    assert info.value.field == "containers.w.volumes[1]" and reason in info.value.reason


def test_bind_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"backend": {"type": "docker"},
                            "containers": {"w": {"volumes": ["./site:/srv:ro", "named:/data"]}}})
    spec = load_config(path).containers["w"].spec
    assert spec.volumes == (Volume(str(tmp_path / "site"), "/srv", True), Volume("named", "/data"))
    assert [str(v) for v in spec.volumes] == [f"{tmp_path}/site:/srv:ro", "named:/data"]


def test_ports_user_labels_reach_the_spec() -> None:
    config = parse_config({"backend": {"type": "docker"}, "containers": {"w": {
        "port": 8080, "ports": [9090, "9091/udp", "9090/tcp", 8080], "user": "1000:1000",
        "labels": {"com.example.team": "web", "traefik.enable": True, "n": 3}}}})
    spec = config.containers["w"].spec
    assert spec.ports == ("9090/tcp", "9091/udp")  # the proxied port and repeats dropped
    assert spec.user == "1000:1000" and spec.labels == {"com.example.team": "web", "traefik.enable": "true", "n": "3"}
    assert parse_config({"backend": {"type": "docker"},
                         "containers": {"w": {"user": 33}}}).containers["w"].spec.user == "33"


@pytest.mark.parametrize("section, field, reason", [
    ({"labels": {"proxy.key": "x"}}, "containers.w.labels", "are the proxy's own"),
    ({"labels": {"bad label": "x"}}, "containers.w.labels", "invalid label name"),
    ({"ports": [70000]}, "containers.w.ports[0]", "expected a container port"),
    ({"ports": ["90/sctp"]}, "containers.w.ports[0]", "expected a container port"),
    ({"user": "root user"}, "containers.w.user", "expected 'uid[:gid]'"),
])
def test_bad_class_options_name_the_field(section: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"backend": {"type": "docker"}, "containers": {"w": section}})
    assert info.value.field.startswith(field) and reason in info.value.reason


@pytest.mark.parametrize("backend", ["process", "stub"])
@pytest.mark.parametrize("option, value", [("volumes", ["d:/d"]), ("ports", [9090]), ("user", "1000"),
                                           ("labels", {"a": "b"})])
def test_process_and_stub_backends_refuse_container_only_options(backend: str, option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"backend": {"type": backend}, "containers": {"w": {option: value}}})
    assert info.value.field == f"containers.w.{option}"
    assert f"the {backend} backend runs plain processes and cannot apply {option}" in info.value.reason


ENV_FILE = """\
# a comment
export A=1
B="two words\\nnext" # trailing comment
C='single $NOT #kept'
D=bare value # comment
E=
F=has=equals
  G = spaced
FROM_ENV
UNSET_ONE
"""


def test_env_file_format(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text(ENV_FILE)
    assert parse_env_file(path, {"FROM_ENV": "proxy's"}) == {
        "A": "1", "B": "two words\nnext", "C": "single $NOT #kept", "D": "bare value", "E": "", "F": "has=equals",
        "G": "spaced", "FROM_ENV": "proxy's"}


@pytest.mark.parametrize("text, reason", [("A='open\n", "unbalanced ' quote"), ("1A=x\n", "expected KEY=VALUE"),
                                          ('A="x" y\n', 'unbalanced " quote')])
def test_bad_env_file_lines(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "bad.env").write_text("OK=1\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"containers": {"w": {"env_file": "bad.env"}}}))
    assert info.value.field == "containers.w.env_file" and f"bad.env line 2: {reason}" in info.value.reason


def test_env_files_merge_under_env_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.env").write_text("A=from-a\nB=from-a\nC=from-a\n")
    (tmp_path / "conf" / "b.env").write_text("B=from-b\n")
    path = write(tmp_path / "conf", {"containers": {"w": {"env_file": ["a.env", "b.env"], "env": {"C": "env"}}}})
    assert load_config(path).containers["w"].spec.env == {"PORT": "8080", "A": "from-a", "B": "from-b", "C": "env"}
    one = write(tmp_path / "conf", {"containers": {"w": {"env_file": "b.env"}}}, "one.yaml")
    assert load_config(one).containers["w"].spec.env == {"PORT": "8080", "B": "from-b"}


def test_a_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"containers": {"w": {"env_file": ["nope.env"]}}}))
    assert info.value.field == "containers.w.env_file"
    assert f"cannot read {tmp_path}/nope.env: No such file or directory" in info.value.reason


# ---------------------------------------------------------------- proxy_id


def test_proxy_id_is_derived_from_host_and_config_path(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, {"containers": {"w": {}}}, "a.yaml")).backend.proxy_id
    b = load_config(write(tmp_path, {"containers": {"w": {}}}, "b.yaml")).backend.proxy_id
    again = load_config(tmp_path / "a.yaml").backend.proxy_id
    assert a == again and a != b and len(a) <= 63
    host = socket.gethostname().split(".")[0]
    assert a.startswith(host[:20]) and a == derived_proxy_id(tmp_path / "a.yaml", Cluster())
    parse_config({"backend": {"proxy_id": a}, "containers": {"w": {}}})  # a valid Name
    explicit = write(tmp_path, {"backend": {"proxy_id": "mine"}, "containers": {"w": {}}}, "c.yaml")
    assert load_config(explicit).backend.proxy_id == "mine"
    assert parse_config({"containers": {"w": {}}}).backend.proxy_id == "default"  # no path: unchanged


def test_clustered_replicas_derive_one_shared_proxy_id(tmp_path: Path) -> None:
    cluster = {"store": "etcd", "endpoints": ["http://127.0.0.1:2379"]}
    a = load_config(write(tmp_path, {"cluster": cluster, "containers": {"w": {}}}, "a.yaml")).backend.proxy_id
    b = load_config(write(tmp_path, {"cluster": cluster, "containers": {"w": {}}}, "b.yaml")).backend.proxy_id
    other = load_config(write(tmp_path, {"cluster": {**cluster, "prefix": "/other"}, "containers": {"w": {}}},
                              "o.yaml")).backend.proxy_id
    assert a == b and a.startswith("cluster-") and other != a


def test_owner_label_names_a_live_other_process_on_this_host() -> None:
    host = socket.gethostname()
    assert owner() == f"{host}:{os.getpid()}"
    assert not held_elsewhere({LABEL_OWNER: owner()})  # ours
    assert held_elsewhere({LABEL_OWNER: f"{host}:{os.getppid()}"})  # alive, not us
    assert not held_elsewhere({LABEL_OWNER: f"another-host-{host}:{os.getppid()}"})
    assert not held_elsewhere({})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not held_elsewhere({LABEL_OWNER: f"{host}:{dead.pid}"})
