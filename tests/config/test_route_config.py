"""Route config mistakes (paths, hosts, keys, User-Agent patterns) are ConfigErrors naming the field, and
`python -m proxy` prints them as one line and exits 2, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.schema import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]


def with_routes(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"containers": {"w": {"image": "x"}}, "routes": [{"container": "w", **r} for r in routes]}


API = {"path": "/api/{tail:.*}", "key": "k"}

MISTAKES = [
    # (routes, field, words of the reason)
    ([API, {"path": "/b"}, {"path": "/c"}, {"path": "/b"}], "routes[3].path", "duplicate of routes[1]"),
    ([API, {"path": "/api/{rest:.*}"}], "routes[1].path", "duplicate of routes[0]"),
    ([{"path": "/t/{x}", "host": "{id}.example.com", "key": "{id}"},
      {"path": "/t/{x}", "host": "{ID}.Example.com.", "key": "a"}], "routes[1].path", "duplicate of routes[0]"),
    ([{"path": "/t/{x}", "host": "a.example.com"}, {"path": "/t/{y}", "host": "b.example.com"}],
     "routes[1].path", "name its variables alike"),
    ([{"path": "/a/{id", "key": "k"}], "routes[0].path", "unbalanced"),
    ([{"path": "/a/{tail:[}", "key": "k"}], "routes[0].path", "bad regular expression"),
    ([{"path": "/a/{id}/{id}", "key": "{id}"}], "routes[0].path", "variable {id} is used twice"),
    ([{"path": "/a", "host": "api.*.example.com"}], "routes[0].host", "first label"),
    ([{"path": "/a", "host": "bad host"}], "routes[0].host", "a label is"),
    ([{"path": "/a/{id}", "host": "{id}.example.com", "key": "{id}"}], "routes[0].host", "path variable too"),
    ([{"path": "/a", "host": "{app}.example.com", "key": "{id}"}], "routes[0].key", "placeholder {id}"),
    ([{"path": "/a", "key": "{header:}"}], "routes[0].key", "expected a header name"),
    ([{"path": "/a", "key": "x-{cookie:s}", "mode": "lb", "instances": 2}], "routes[0].key", "lb route"),
    ([{"path": "/a/{tail:.*}", "key": "k", "upstream_path": "/{header:X-T}"}], "routes[0].upstream_path",
     "only `key`"),
    ([{"path": "/a", "key": "k", "ignore_user_agents": ["ok", "bad(["]}], "routes[0].ignore_user_agents[1]",
     "invalid regular expression"),
]


@pytest.mark.parametrize("routes, field, words", MISTAKES)
def test_each_route_mistake_names_its_field(routes, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config(with_routes(*routes))
    assert err.value.field == field, err.value
    assert words in err.value.reason, err.value


def test_routes_of_one_path_may_differ_by_host():
    config = parse_config(with_routes(
        {"path": "/{tail:.*}", "host": "{id}.apps.example.com", "key": "{id}", "upstream_path": "/{id}/{tail}"},
        {"path": "/{tail:.*}", "host": "*.example.com", "key": "other"},
        {"path": "/{tail:.*}", "key": "t-{header:X-Tenant}", "ignore_user_agents": ["(?i)bot"]},
        {"path": "/c/{tail:.*}", "key": "{cookie:session}"},
    ))
    assert [r.host for r in config.routes] == ["{id}.apps.example.com", "*.example.com", None, None]
    assert config.routes[2].ignore_user_agents == ("(?i)bot",)


@pytest.mark.parametrize("routes, field, words", [MISTAKES[0], MISTAKES[4], MISTAKES[6], MISTAKES[7]])
def test_the_cli_prints_one_line_and_exits_2(tmp_path, routes, field, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_routes(*routes)))
    done = subprocess.run([sys.executable, "-m", "proxy", "--config", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"config error: {field}: ") and words in lines[0], lines
    assert done.stdout == ""
