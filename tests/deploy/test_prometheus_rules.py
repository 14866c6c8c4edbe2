"""deploy/: the rules pass `promtool check rules` and their unit tests (`promtool test rules`), the scrape
config passes `promtool check config`, and every metric the dashboard and the rules read is exported.
Skips without promtool; fails under CI=true."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.prometheus import ROOT, binary, dashboard, dashboard_targets

DEPLOY = ROOT / "deploy"
OPTIONAL: set[str] = set()  # metrics rules may read that this version does not export (none now)


@pytest.fixture
def backend_kind() -> str:
    return "stub"


def promtool(*args: str) -> str:
    result = subprocess.run([binary("promtool"), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rules_check_and_unit_tests_pass():
    assert "SUCCESS" in promtool("check", "rules", str(DEPLOY / "rules.yml"))
    assert "SUCCESS" in promtool("test", "rules", str(DEPLOY / "rules_test.yml"))


def test_scrape_config_checks_and_loads_the_rules():
    out = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert "1 rule files found" in out and "rules.yml" in out


def _names(text: str) -> set[str]:
    """Metric names read by PromQL `text` (not recording rules' `level:metric:op` names)."""
    return set(re.findall(r"(?<![:\w])proxy_[a-z0-9_]+(?![:\w])", text))


async def test_dashboard_and_rules_read_only_exported_metrics_and_labels(make_proxy):
    h = await make_proxy(config={"containers": {"broken": {"image": "stub:no_such_module:create_app"}},
                                 "routes": [{"path": "/b/{tail:.*}", "container": "broken", "key": "b"}]})
    exported = set()
    for (name, _), _ in (await h.metrics()).items():  # before any traffic: everything rated exists already
        exported |= {name, re.sub(r"_(bucket|count|sum)$", "", name)}
    exprs = [expr for _, _, expr in dashboard_targets()]
    exprs += [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    rules = (DEPLOY / "rules.yml").read_text()
    wanted = _names(" ".join(exprs)) | _names(rules)
    assert wanted - exported - OPTIONAL == set()
    for text in (*exprs, rules):  # Kubernetes scrape configs rename a `container` label to `exported_container`
        assert not re.search(r"\bcontainer\s*(=|!=|=~|!~|\)|,)", text), text
        assert "$container\"" not in text and "{{container}}" not in text
