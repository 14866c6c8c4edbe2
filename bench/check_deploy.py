"""Validate deploy/: grafana-dashboard.json is well-formed and every metric it queries is exported by a running proxy.

    python -m bench.check_deploy        (a few seconds; --quick and --smoke are accepted and change nothing)

Starts a proxy (stub backend) on a free port, drives one start, one idle stop, one failed start and a few
requests, scrapes /metrics, and checks each `proxy_*` name in the dashboard's expressions (and the
variable query) against the scraped sample names. Also checks deploy/prometheus.yml parses and scrapes /metrics.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request

import yaml

from bench.lib.common import ROOT, free_port, http_text, metrics_samples, proxy, summary

CONFIG = {
    "logging": {"level": "warning"},
    "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "sleep_after": "500ms"},
                   "broken": {"image": "stub:no_such_module:create_app", "start_timeout": "2s"}},
    "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"},
               {"path": "/broken/{tail:.*}", "container": "broken", "key": "broken"}],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="accepted for bench/run_all; changes nothing")
    ap.add_argument("--smoke", action="store_true", help="accepted for bench/run_all; changes nothing")
    ap.parse_args()
    problems: list[str] = []
    dash = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    exprs.append(v)
                elif k == "datasource" and isinstance(v, dict) and v.get("type") == "prometheus" \
                        and v.get("uid") != "${DS_PROMETHEUS}":
                    problems.append(f"datasource uid {v.get('uid')!r} is not ${{DS_PROMETHEUS}}")
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    if not 36 <= dash.get("schemaVersion", 0) <= 41:
        problems.append(f"schemaVersion {dash.get('schemaVersion')}")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    names = sorted({n for e in exprs for n in re.findall(r"\bproxy_[a-z_]+", e)})

    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    if job.get("metrics_path") != "/metrics" or "127.0.0.1:8787" not in job["static_configs"][0]["targets"]:
        problems.append("prometheus.yml does not scrape 127.0.0.1:8787/metrics")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with proxy(CONFIG, port):
        http_text(f"{base}/api/health")
        try:
            urllib.request.urlopen(f"{base}/broken/x", timeout=10)
        except urllib.error.HTTPError:
            pass
        time.sleep(1.5)  # idle stop of `shared`
        http_text(f"{base}/api/health")
        exported = {n for n, _ in metrics_samples(http_text(f"{base}/metrics"))}
    missing = [n for n in names if n not in exported]
    for n in names:
        print(f"  {'ok     ' if n in exported else 'MISSING'} {n}")
    problems += [f"metric not exported: {n}" for n in missing]
    print(f"{len(dash['panels'])} panels, {len(exprs)} expressions, {len(names)} metric names; "
          f"{'all present in /metrics' if not missing else f'{len(missing)} missing'}")
    for p in problems:
        print(f"PROBLEM: {p}")
    summary("check_deploy", {"panels": len(dash["panels"]), "metric_names": names, "problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
