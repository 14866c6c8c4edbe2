"""Proxy overhead: lazy-proxy side by side with nginx (optionally haproxy) in front of the same upstream.

    python -m bench.overhead [--quick | --smoke] [--haproxy] [--variants nginx,lazy-proxy,...]
                             [--rounds N] [--seconds S] [--upstream model|static|busybox|pyhttp]

(`--smoke`: one 1 s round of each kind, no wrk warm-up: only proves the bench runs; its numbers mean nothing.)

Method
- One upstream for everything, as its own process pinned to core 1, GET /api/health (a small JSON answer):
  `--upstream model` (default) the model service (`python -m model_service`); `static` nginx answering from
  memory (the cheapest keep-alive app: the proxy is the bottleneck); `busybox` busybox httpd serving a file
  (answers HTTP/1.1 with `Connection: close` and closes: one connection per request, forks per connection);
  `pyhttp` Python's `http.server` (HTTP/1.0 answers, closes). The upstream's CPU counts its reaped children.
- The proxies under test run at the same time, each pinned to core 0 and idle while another is measured:
  nginx with ONE worker process (`upstream` block with `keepalive 32`, HTTP/1.1, access log ON to a file),
  lazy-proxy through `python -m bench.lib.launcher --upstream` (a backend whose only instance is that process;
  default config: one JSON log line per request, written to a file, uvloop), and with --haproxy haproxy 2.6
  (nbthread 1, `http-reuse always`, httplog to a file). Configs: bench/lib/nginx.py.
- "direct" is the same load straight at the upstream: the ceiling every proxy is compared with.
- Closed loop (max throughput): wrk -t2 -c32, unpinned, for S seconds per variant; rounds are interleaved
  (every round runs each variant once, the order rotating by one each round), so slow drifts of this noisy
  2-core machine hit all variants alike. Per variant: rps, p50/p99 (wrk), and CPU microseconds per request
  of the proxy (utime+stime from /proc summed over its process tree, e.g. nginx master + worker) and of the
  upstream, divided by the requests wrk completed. Everything warms up (one request, then 1-2 s of wrk)
  before the first round.
- Half load (latency): bench.lib.openloop, an open-loop generator (fixed send schedule, latency from the
  scheduled send time: no coordinated omission), at ONE rate for all variants: 50% of the slowest proxy's
  closed-loop rps, at most HALF_RATE_MAX (one Python process: beyond it the generator's own queueing is the
  tail, e.g. direct's p99 85 ms at 23.7k rps on a quiet machine); rounds interleaved the same way.
- Reported numbers are medians over rounds. Ratios to direct and added p99 are paired: the median over rounds
  of (variant / direct) and (variant p99 - direct p99) measured in the same round.

Goal checks (the project's issue), all against nginx measured in the same run:
  lazy-proxy ratio >= 0.8 x nginx ratio; lazy-proxy CPU per request <= 2.5 x nginx's;
  lazy-proxy added p99 at the half-load rate <= nginx's added p99 + 1 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lib.common import (PY, Server, cpu_seconds, free_port, has_wrk, http_text, med, model_service,
                           openloop, paired, process_tree, proxy, summary, table, tool, wrk)
from bench.lib.nginx import haproxy, nginx, static_nginx
from bench.overhead_goals import goal_checks, print_goals

CONNS, THREADS = 32, 2
HALF_RATE_MAX = 6000.0  # rps: what bench.lib.openloop (one Python process) sends on time, its own tail small
PATH = "/api/health"
PROXY_CORE, UPSTREAM_CORE = "0", "1"
NAN = float("nan")


@dataclass(frozen=True)
class Mode:
    rounds: int          # closed-loop rounds (each runs every variant once)
    seconds: int         # wrk duration per variant per round
    half_rounds: int
    half_seconds: float  # open-loop duration per variant per round
    warm_seconds: int


QUICK = Mode(rounds=3, seconds=2, half_rounds=3, half_seconds=2.0, warm_seconds=1)
FULL = Mode(rounds=5, seconds=6, half_rounds=5, half_seconds=5.0, warm_seconds=2)
SMOKE = Mode(rounds=1, seconds=1, half_rounds=1, half_seconds=0.5, warm_seconds=0)  # CI: does it still run?


# ---------------------------------------------------------------- variants


@dataclass(frozen=True)
class Setup:
    upstream_port: int
    upstream_pid: int
    workdir: Path
    proxy_cpus: str | None


def _site(workdir: Path) -> Path:
    """A document root with the benchmark's answer at PATH (for the file-serving upstreams)."""
    root = workdir / "site"
    (root / PATH.strip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / PATH.strip("/")).write_text('{"status":"ok"}')
    return root


def upstream_server(kind: str, port: int, workdir: Path, cpus: str | None) -> Server:
    """The upstream of `--upstream KIND` on 127.0.0.1:port."""
    if kind == "static":
        return static_nginx(port, workdir / "upstream", cpus=cpus)
    if kind == "busybox":
        argv = [tool("busybox") or "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(_site(workdir))]
        return Server(argv, f"http://127.0.0.1:{port}{PATH}", cpus=cpus)
    if kind == "pyhttp":
        argv = [PY, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(_site(workdir)), str(port)]
        return Server(argv, f"http://127.0.0.1:{port}{PATH}", cpus=cpus)
    return model_service(port, cpus=cpus)


UPSTREAMS = ("model", "static", "busybox", "pyhttp")
CLOSING = ("busybox", "pyhttp")  # one connection per request: no half-load phase (its generator keeps connections)


@dataclass(frozen=True)
class Target:
    """A running variant: where to send the load, and which processes are "the proxy" (none for direct)."""

    name: str
    url: str
    proxy_pid: int | None

    def proxy_pids(self) -> list[int]:
        return process_tree(self.proxy_pid) if self.proxy_pid else []


Starter = Callable[[str, Setup], AbstractContextManager[Target]]


@contextlib.contextmanager
def direct(name: str, s: Setup) -> Iterator[Target]:
    yield Target(name, f"http://127.0.0.1:{s.upstream_port}{PATH}", None)


def reference(start: Callable[..., Any]) -> Starter:
    """A variant for a reference proxy of bench/lib/nginx.py (nginx, haproxy)."""

    @contextlib.contextmanager
    def run(name: str, s: Setup) -> Iterator[Target]:
        port = free_port()
        with start(s.upstream_port, port, s.workdir / name, cpus=s.proxy_cpus, ready_path=PATH) as server:
            yield Target(name, f"http://127.0.0.1:{port}{PATH}", server.pid)

    return run


def lazy_proxy(*, uvloop: bool = True, log_requests: bool = True, baseline: bool = False,
               compiled: bool = False) -> Starter:
    """A lazy-proxy variant: bench.lib.launcher --upstream, its log (stderr) to a file. `baseline`: the
    checkout named by $BENCH_BASELINE (e.g. a `git worktree` of an earlier commit), for before/after runs;
    `compiled`: this checkout's hot modules compiled by mypyc, $BENCH_LAZY_MYPYC (made by `python -m
    proxy.compile --out DIR`) or else built into the run's directory first (~40 s)."""

    @contextlib.contextmanager
    def run(name: str, s: Setup) -> Iterator[Target]:
        port = free_port()
        config = {"logging": {"requests": log_requests},
                  "containers": {"svc": {"sleep_after": 0}},
                  "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}]}
        root = Path(os.environ["BENCH_BASELINE"]) if baseline else mypyc_build(s.workdir) if compiled else None
        with proxy(config, port, uvloop=uvloop, upstream=f"http://127.0.0.1:{s.upstream_port}",
                   cpus=s.proxy_cpus, log=str(s.workdir / f"{name}.log"), root=root) as server:
            if compiled:  # the compiled modules are the ones loaded (mypyc's runtime library is mapped)
                assert "__mypyc" in Path(f"/proc/{server.pid}/maps").read_text(), f"{name}: not compiled"
            yield Target(name, f"http://127.0.0.1:{port}{PATH}", server.pid)

    return run


def mypyc_build(workdir: Path) -> Path:
    """A copy of proxy/ with its hot modules compiled (python -m proxy.compile --out)."""
    given = os.environ.get("BENCH_LAZY_MYPYC")
    if given:
        return Path(given)
    from proxy.compile import build

    build(workdir / "mypyc")
    return workdir / "mypyc"


def closing_floor(mode: str) -> Starter:
    """bench/closing_floor.py (`mode` raw or transport): the least a Python relay can pay per closing answer."""

    @contextlib.contextmanager
    def run(name: str, s: Setup) -> Iterator[Target]:
        port = free_port()
        argv = [PY, "-m", "bench.closing_floor", "--port", str(port), "--upstream-port", str(s.upstream_port),
                "--mode", mode]
        with Server(argv, f"http://127.0.0.1:{port}{PATH}", cpus=s.proxy_cpus) as server:
            yield Target(name, f"http://127.0.0.1:{port}{PATH}", server.pid)

    return run


def floor(*, workers: int = 1, compiled: bool = False) -> Starter:
    """bench/floor.py, the cheapest Python proxy with lazy-proxy's per-request duties (its access log to a file).
    `workers`: processes on the port (SO_REUSEPORT), pinned to both cores (the others are pinned to one);
    `compiled`: the module built by mypyc ($BENCH_FLOOR_MYPYC: a directory holding floor*.so, see bench/floor.py)."""

    @contextlib.contextmanager
    def run(name: str, s: Setup) -> Iterator[Target]:
        port = free_port()
        args = ["--port", str(port), "--upstream-port", str(s.upstream_port), "--log", str(s.workdir / f"{name}.log"),
                "--workers", str(workers)]
        env = None
        if compiled:
            argv = [PY, "-c", "import sys, floor; floor.main(sys.argv[1:])", *args]
            env = {**os.environ, "PYTHONPATH": os.environ["BENCH_FLOOR_MYPYC"]}
        else:
            argv = [PY, "-m", "bench.floor", *args]
        cpus = s.proxy_cpus if workers == 1 or s.proxy_cpus is None else f"{PROXY_CORE},{UPSTREAM_CORE}"
        with Server(argv, f"http://127.0.0.1:{port}{PATH}", env=env, cpus=cpus) as server:
            yield Target(name, f"http://127.0.0.1:{port}{PATH}", server.pid)

    return run


VARIANTS: dict[str, Starter] = {
    "direct": direct,
    "nginx": reference(nginx),
    "lazy-proxy": lazy_proxy(),
    "haproxy": reference(haproxy),
    "lazy-proxy-asyncio": lazy_proxy(uvloop=False),
    "lazy-proxy-nolog": lazy_proxy(log_requests=False),
    "lazy-proxy-mypyc": lazy_proxy(compiled=True),  # python -m proxy.compile (optional $BENCH_LAZY_MYPYC=<its --out>)
    "baseline": lazy_proxy(baseline=True),  # needs BENCH_BASELINE=<another checkout>
    "floor-raw": closing_floor("raw"),  # closing upstreams only: bench/closing_floor.py
    "floor-transport": closing_floor("transport"),
    "floor": floor(),  # bench/floor.py: the cheapest Python proxy (issue 27's feasibility check)
    "floor-mypyc": floor(compiled=True),  # needs BENCH_FLOOR_MYPYC=<dir with floor's mypyc build>
    "floor-2w": floor(workers=2),  # two SO_REUSEPORT workers on both cores
}
DEFAULT_VARIANTS = ["nginx", "lazy-proxy"]
NEEDS = {"nginx": "nginx", "haproxy": "haproxy"}  # variant -> program it runs (Debian: nginx-light, haproxy)


# ---------------------------------------------------------------- measuring


def closed_loop(t: Target, s: Setup, seconds: int) -> dict[str, float]:
    """One wrk run against one variant, with CPU microseconds per request of its proxy and of the upstream."""
    pids = t.proxy_pids()
    ups = process_tree(s.upstream_pid)
    proxy0, up0 = cpu_seconds(pids), cpu_seconds(ups, reaped=True)
    r = wrk(t.url, threads=THREADS, conns=CONNS, seconds=seconds)
    proxy1, up1 = cpu_seconds(pids), cpu_seconds(ups, reaped=True)
    n = max(1.0, r.get("requests", 0.0))
    r["proxy_cpu_us"] = (proxy1 - proxy0) * 1e6 / n if pids else NAN
    r["upstream_cpu_us"] = (up1 - up0) * 1e6 / n
    return r


def half_loop(t: Target, s: Setup, rate: float, seconds: float) -> dict[str, float]:
    """One open-loop run at `rate`, with the upstream's CPU microseconds per request: at the same rate for every
    variant, what a proxy makes the instance spend is compared without the pace of a closed loop in it (a slower
    proxy hands the instance fewer requests per wakeup, which costs it more per request)."""
    ups = process_tree(s.upstream_pid)
    up0 = cpu_seconds(ups, reaped=True)
    r = openloop(t.url, rate, seconds)
    r["upstream_cpu_us"] = (cpu_seconds(ups, reaped=True) - up0) * 1e6 / max(1.0, r.get("requests", 0.0))
    return r


def interleaved(targets: list[Target], rounds: int,
                measure: Callable[[Target], dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    """`rounds` rounds; each measures every target once, the order rotated by one per round."""
    out: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for i in range(rounds):
        k = i % len(targets)
        for t in targets[k:] + targets[:k]:
            out[t.name].append(measure(t))
    return out


def warm(targets: list[Target], seconds: int) -> None:
    for t in targets:
        http_text(t.url)  # lazy-proxy: the first request "starts" the instance
        if seconds > 0:  # 0 only in --smoke
            wrk(t.url, threads=THREADS, conns=CONNS, seconds=seconds)


# ---------------------------------------------------------------- statistics


def closed_stats(runs: list[dict[str, float]], base: list[dict[str, float]],
                 nginx: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """The closed-loop figures of one variant; paired per round with direct and, when it ran, nginx."""
    versus = {} if nginx is None else {"rps_vs_nginx": paired(runs, nginx, "rps", lambda a, b: a / b),
                                       "cpu_vs_nginx": paired(runs, nginx, "proxy_cpu_us", lambda a, b: a / b)}
    return {**versus, "rps": med(runs, "rps"), "ratio": paired(runs, base, "rps", lambda a, b: a / b),
            "proxy_cpu_us_per_req": med(runs, "proxy_cpu_us"), "upstream_cpu_us_per_req": med(runs, "upstream_cpu_us"),
            "p50_ms": med(runs, "p50"), "p99_ms": med(runs, "p99"),
            "errors": int(sum(r["errors"] + r["non2xx"] for r in runs)),
            "rounds_rps": [r["rps"] for r in runs], "rounds_cpu_us": [r.get("proxy_cpu_us", NAN) for r in runs]}


def open_stats(runs: list[dict[str, float]], base: list[dict[str, float]]) -> dict[str, Any]:
    return {"achieved_rps": med(runs, "achieved_rps"), "p50_ms": med(runs, "p50"), "p99_ms": med(runs, "p99"),
            "added_p99_ms": paired(runs, base, "p99", lambda a, b: a - b),
            "errors": int(sum(r["errors"] for r in runs)), "rounds_p99_ms": [r["p99"] for r in runs],
            "upstream_cpu_us_per_req": med(runs, "upstream_cpu_us")}


# ---------------------------------------------------------------- output


def _rounds(values: list[float], fmt: str = ".0f") -> str:
    return " ".join(format(v, fmt) for v in values)


def print_closed(closed: dict[str, dict], mode: Mode) -> None:
    rows = [[n, r["rps"], f"{r['ratio']:.2f}", r["proxy_cpu_us_per_req"], r["upstream_cpu_us_per_req"],
             r["p50_ms"], r["p99_ms"], r["errors"], _rounds(r["rounds_rps"]), _rounds(r["rounds_cpu_us"], ".1f")]
            for n, r in closed.items()]
    table(["variant", "rps", "ratio", "proxy CPU us/req", "upstream CPU us/req", "p50 ms", "p99 ms", "errors",
           "rps by round", "CPU us by round"], rows,
          title=f"closed loop: wrk -t{THREADS} -c{CONNS}, {mode.seconds} s x {mode.rounds} interleaved rounds "
                f"(medians; ratio = median of per-round variant/direct)")


def print_half(half: dict[str, dict], rate: float, mode: Mode) -> None:
    rows = [[n, rate, r["achieved_rps"], r["p50_ms"], r["p99_ms"], r["added_p99_ms"], r["upstream_cpu_us_per_req"],
             r["errors"], _rounds(r["rounds_p99_ms"], ".2f")] for n, r in half.items()]
    table(["variant", "target rps", "achieved rps", "p50 ms", "p99 ms", "added p99 ms", "upstream CPU us/req",
           "errors", "p99 by round"],
          rows, title=f"half load: open loop at {rate:.0f} rps for all (50% of the slowest proxy's max, "
                      f"at most {HALF_RATE_MAX:g}), "
                      f"{mode.half_seconds:g} s x {mode.half_rounds} interleaved rounds "
                      f"(medians; added p99 = median of per-round variant - direct)")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"short rounds: {QUICK}")
    ap.add_argument("--smoke", action="store_true", help=f"tiny, for CI (numbers meaningless): {SMOKE}")
    ap.add_argument("--haproxy", action="store_true", help="add haproxy as a variant")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, from {', '.join(v for v in VARIANTS if v != 'direct')} "
                         f"(direct always runs; default %(default)s)")
    ap.add_argument("--rounds", type=int, help="override the closed-loop and half-load round counts")
    ap.add_argument("--seconds", type=int, help="override the closed-loop seconds per run")
    ap.add_argument("--upstream", choices=UPSTREAMS, default="model",
                    help="what every variant proxies to (default %(default)s; see the module's docstring)")
    ap.add_argument("--closed-only", action="store_true", help="skip the half-load (open loop) phase")
    ap.add_argument("--half-rate", type=float, help="open-loop rate in rps (default: 50%% of the slowest proxy's "
                                                   f"max, at most {HALF_RATE_MAX:g}: the Python load generator's "
                                                   "own tail grows beyond)")
    args = ap.parse_args()
    names = ["direct"] + [v for v in args.variants.split(",") if v and v != "direct"]
    if args.haproxy and "haproxy" not in names:
        names.append("haproxy")
    if unknown := [n for n in names if n not in VARIANTS]:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    args.names = list(dict.fromkeys(names))
    mode = SMOKE if args.smoke else QUICK if args.quick else FULL
    args.mode = Mode(rounds=args.rounds or mode.rounds, seconds=args.seconds or mode.seconds,
                     half_rounds=args.rounds or mode.half_rounds, half_seconds=mode.half_seconds,
                     warm_seconds=mode.warm_seconds)
    return args


def cores() -> tuple[str | None, str | None]:
    """(proxy core, upstream core), or no pinning on a machine without cores 0 and 1."""
    ok = {0, 1} <= os.sched_getaffinity(0)
    return (PROXY_CORE, UPSTREAM_CORE) if ok else (None, None)


def main() -> int:
    args = parse_args()
    mode: Mode = args.mode
    if not has_wrk():
        print("wrk is required (apt-get install wrk)", file=sys.stderr)
        return 2
    if missing := [f"{n} needs {NEEDS[n]}" for n in args.names if n in NEEDS and tool(NEEDS[n]) is None]:
        print(f"{'; '.join(missing)} (not installed): install it or leave it out of --variants", file=sys.stderr)
        return 2
    proxy_cpus, upstream_cpus = cores()
    print(f"proxy overhead: GET {PATH} on upstream {args.upstream}; variants {', '.join(args.names)}")
    print(f"pinning: upstream on core {upstream_cpus}, proxies on core {proxy_cpus}, load generators unpinned")
    up_port = free_port()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-overhead-")))
        upstream = stack.enter_context(upstream_server(args.upstream, up_port, workdir, upstream_cpus))
        s = Setup(up_port, upstream.pid, workdir, proxy_cpus)
        targets = [stack.enter_context(VARIANTS[n](n, s)) for n in args.names]
        warm(targets, mode.warm_seconds)

        runs = interleaved(targets, mode.rounds, lambda t: closed_loop(t, s, mode.seconds))
        closed = {n: closed_stats(r, runs["direct"], runs.get("nginx")) for n, r in runs.items()}
        print_closed(closed, mode)

        rate, half = 0.0, {}
        if not args.closed_only and args.upstream not in CLOSING:  # (bench.lib.openloop keeps its connections)
            rate = args.half_rate or min(HALF_RATE_MAX,
                                         0.5 * min(r["rps"] for n, r in closed.items() if n != "direct"))
            hruns = interleaved(targets, mode.half_rounds, lambda t: half_loop(t, s, rate, mode.half_seconds))
            half = {n: open_stats(r, hruns["direct"]) for n, r in hruns.items()}
            print_half(half, rate, mode)

    goals = goal_checks(closed, half, args.upstream)
    print_goals(goals)
    summary("overhead", {"upstream": args.upstream,
                         "quick": args.quick, "smoke": args.smoke, "mode": vars(mode), "variants": args.names,
                         "pinning": {"proxy": proxy_cpus, "upstream": upstream_cpus},
                         "closed_loop": closed, "half_load": {"rate": rate, **half},
                         "goals": {k: {f: v for f, v in g.items() if f != "label"} for k, g in goals.items()},
                         **{f"goal_{k}_met": g["met"] for k, g in goals.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
