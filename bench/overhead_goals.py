"""bench.overhead's goal checks: lazy-proxy against nginx measured in the same run (the project's first
issue: ratio, CPU, added p99; issue 27: per-round ratios to nginx, per build)."""

from __future__ import annotations

from typing import Any

from bench.lib.common import goal

# The project's goals, relative to nginx.
RATIO_FACTOR = 0.8   # lazy-proxy ratio >= 0.8 x nginx ratio
CPU_FACTOR = 2.5     # lazy-proxy CPU/request <= 2.5 x nginx's
P99_SLACK_MS = 1.0   # lazy-proxy added p99 <= nginx added p99 + 1 ms
# Issue 27, where the proxy is the bottleneck: the median over rounds of each round's ratio to nginx, per build.
THROUGHPUT_VS_NGINX = {"static": 0.9, "model": 0.95}  # lazy-proxy rps >= this x nginx's rps
CPU_VS_NGINX = {"static": 1.3}  # lazy-proxy CPU per request <= this x nginx's


def _check(value: float, limit: float, met: bool, label: str) -> dict[str, Any]:
    return {"value": value, "limit": limit, "met": bool(met), "label": label}


def per_round_checks(closed: dict[str, dict[str, Any]], upstream: str) -> dict[str, dict[str, Any]]:
    """Issue 27's checks for each lazy-proxy build run (pure Python, compiled): per-round ratios to nginx."""
    checks: dict[str, dict[str, Any]] = {}
    for name in (n for n in closed if n.startswith("lazy-proxy") and "rps_vs_nginx" in closed[n]):
        for what, key, limits, above in (("throughput", "rps_vs_nginx", THROUGHPUT_VS_NGINX, True),
                                         ("cpu", "cpu_vs_nginx", CPU_VS_NGINX, False)):
            if upstream not in limits:
                continue
            ratio, limit = closed[name][key], limits[upstream]
            checks[f"{name}_{what}_vs_nginx"] = _check(
                ratio, limit, ratio >= limit if above else ratio <= limit,
                f"{name} {what} {ratio:.3f} x nginx's {'>=' if above else '<='} {limit} (median of per-round ratios)")
    return checks


def goal_checks(closed: dict[str, dict], half: dict[str, dict], upstream: str) -> dict[str, dict[str, Any]]:
    """The issue's three checks, lazy-proxy against nginx (empty if either was not run), and issue 27's."""
    if "nginx" not in closed or "lazy-proxy" not in closed:
        return per_round_checks(closed, upstream)
    lz, ng = closed["lazy-proxy"], closed["nginx"]
    lz_cpu, ng_cpu = lz["proxy_cpu_us_per_req"], ng["proxy_cpu_us_per_req"]
    ratio_limit, cpu_limit = RATIO_FACTOR * ng["ratio"], CPU_FACTOR * ng_cpu
    checks = {
        "ratio": _check(lz["ratio"], ratio_limit, lz["ratio"] >= ratio_limit,
                        (f"lazy-proxy ratio {lz['ratio']:.2f} >= {RATIO_FACTOR} x nginx ratio {ng['ratio']:.2f} "
                         f"= {ratio_limit:.2f} (per-request logging on)")),
        "cpu": _check(lz_cpu, cpu_limit, lz_cpu <= cpu_limit,
                      (f"lazy-proxy CPU {lz_cpu:.0f} us/req <= {CPU_FACTOR} x nginx {ng_cpu:.0f} us/req "
                       f"= {cpu_limit:.0f} us")),
    }
    if "lazy-proxy" in half and "nginx" in half:
        lz_p99, ng_p99 = half["lazy-proxy"]["added_p99_ms"], half["nginx"]["added_p99_ms"]
        p99_limit = ng_p99 + P99_SLACK_MS
        checks["added_p99"] = _check(lz_p99, p99_limit, lz_p99 <= p99_limit,
                                     (f"lazy-proxy added p99 {lz_p99:.2f} ms <= nginx added p99 {ng_p99:.2f} ms "
                                      f"+ {P99_SLACK_MS:g} ms (open loop, same rate)"))
    return {**checks, **per_round_checks(closed, upstream)}


def print_goals(goals: dict[str, dict[str, Any]]) -> None:
    print("\ngoal checks (against nginx in the same run):")
    if not goals:
        print("  n/a: needs both nginx and lazy-proxy in --variants")
    for g in goals.values():
        print("  " + goal(g["label"], g["met"]))
