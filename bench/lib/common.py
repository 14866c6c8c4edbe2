"""Shared helpers for the benchmarks: free ports, subprocess servers, percentiles, tables, wrk parsing.

Benchmarks are not tests: they print medians and ratios measured in the same run. Import as
`from bench.lib.common import ...`; the benchmarks run from the repository root as `python -m bench.NAME`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
PY = sys.executable


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (e.g. an nginx master and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pids: Sequence[int], reaped: bool = False) -> float:
    """utime + stime summed over processes (each with all its threads), from /proc/PID/stat; gone pids count 0.
    `reaped`: plus cutime + cstime, the children they waited for (a server that forks per connection)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if reaped:
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def rate_and_cpu(pid: int, load: Callable[[], int]) -> tuple[float, float]:
    """Run `load` (it returns how many operations completed): (operations per second, CPU microseconds per
    operation of `pid` and its descendants over the run)."""
    pids = process_tree(pid)
    before = cpu_seconds(pids)
    began = time.monotonic()
    done = load()
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(pids) - before
    return done / elapsed if elapsed else float("nan"), cpu / done * 1e6 if done else float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_root(**extra: str) -> dict[str, str]:
    """This environment with the repository root on PYTHONPATH, so `python -m bench.X` / `-m proxy` work in
    subprocesses whatever their working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}: {url}")
        try:  # an https URL is the bench's own TLS listener on loopback: its test certificate is not checked
            context = ssl._create_unverified_context() if url.startswith("https:") else None
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if resp.status < 500:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    raise RuntimeError(f"server did not come up: {url}")


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """One GET as a load client sees it: (sent, answered) in `time.monotonic()` seconds and the status, 0 when
    the connection failed (an error of its own: the benches count it apart from HTTP errors)."""
    sent = time.monotonic()
    try:
        async with session.get(url) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status = 0
    return sent, time.monotonic(), status


def http_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


class Server:
    """A server subprocess in its own process group; stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], ready_url: str, env: dict[str, str] | None = None,
                 cpus: str | None = None, log: str | None = None, cwd: Path = ROOT) -> None:
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen(list(argv), env=env or env_with_root(), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=str(cwd), start_new_session=True)
        self.ready_url = ready_url
        try:
            wait_http(ready_url, proc=self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}{_tail(log)}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: str | None, chars: int = 2000) -> str:
    """The end of a server's log file, to explain why it did not come up."""
    if not path or not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        return "\n--- " + path + " (end) ---\n" + f.read()[-chars:]


def model_service(port: int, cpus: str | None = None, **env: str) -> Server:
    return Server([PY, "-m", "model_service", "--host", "127.0.0.1", "--port", str(port)],
                  f"http://127.0.0.1:{port}/v2/health/ready", env=env_with_root(**env), cpus=cpus)


# The benches read the proxy's own endpoints on the proxied port, as the seed served them.
SEED_ENDPOINTS = {"enabled": False, "on_proxy_port": ["health", "info", "container-status", "metrics"]}


def write_config(raw: dict[str, Any]) -> str:
    raw = {"admin": SEED_ENDPOINTS, **raw}
    fd, path = tempfile.mkstemp(prefix="bench-proxy-", suffix=".json")  # JSON is valid YAML
    with os.fdopen(fd, "w") as f:
        json.dump(raw, f)
    return path


def module(name: str, *args: str) -> list[str]:
    """argv running a module of this repository (`python -m NAME ARGS`); run it with cwd=ROOT or env_with_root()."""
    return [PY, "-m", name, *args]


def proxy(config: dict[str, Any], port: int, *, uvloop: bool = True, upstream: str | None = None,
          cpus: str | None = None, log: str | None = None, root: Path | None = None) -> Server:
    """The proxy via `python -m bench.lib.launcher` (adds GET /_bench/stats; optional external upstream).
    `root`: another checkout of the project to run instead of this one (a before/after comparison)."""
    path = write_config(config)
    argv = module("bench.lib.launcher", "--config", path, "--port", str(port), "--uvloop", "1" if uvloop else "0")
    if upstream:
        argv += ["--upstream", upstream]
    scheme = "https" if (config.get("server") or {}).get("tls") else "http"
    try:
        # `root` first (the cwd of `-m`), then this checkout: bench/ for a copy that holds only proxy/ (mypyc's)
        env = None if root is None else {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}
        return Server(argv, f"{scheme}://127.0.0.1:{port}/health", env=env, cpus=cpus, log=log, cwd=root or ROOT)
    finally:
        os.unlink(path)


def metrics_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    total = 0.0
    for (n, lab), v in samples.items():
        d = dict(lab)
        if n == name and all(d.get(k) == val for k, val in labels.items()):
            total += v
    return total


# ---------------------------------------------------------------- numbers


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def med(runs: list[dict[str, float]], field: str) -> float:
    return median([r.get(field, float("nan")) for r in runs])


def paired(runs: list[dict[str, float]], base: list[dict[str, float]], field: str,
           op: Callable[[float, float], float]) -> float:
    """Median over rounds of op(variant, direct) for the same round."""
    return median([op(r.get(field, float("nan")), b.get(field, float("nan"))) for r, b in zip(runs, base, strict=True)])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _numeric(s: str) -> bool:
    return s == "n/a" or bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+%?x?", s))


def _finite(v: Any) -> Any:
    """NaN/inf -> None, recursively, so the SUMMARY line is strict JSON."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def summary(name: str, data: dict[str, Any]) -> None:
    print("SUMMARY " + json.dumps(_finite({"bench": name, **data}), sort_keys=True, default=str, allow_nan=False))
    sys.stdout.flush()


def goal(label: str, met: bool) -> str:
    return f"{label}: {'MET' if met else 'NOT MET'}"


# ---------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, *, threads: int = 2, conns: int = 32, seconds: float = 5, script: str | None = None,
        cpus: str | None = None) -> dict[str, float]:
    """Run wrk --latency; return rps, p50/p75/p90/p99 in ms, errors."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, int(round(seconds)))}s", "--latency", "--timeout", "5s"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    res: dict[str, float] = {"rps": float("nan"), "errors": 0.0, "non2xx": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    for p in ("50", "75", "90", "99"):
        if m := re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M):
            res[f"p{p}"] = _ms(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["errors"] = float(sum(int(x) for x in m.groups()))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["non2xx"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res["requests"] = float(m.group(1))
    return res


def openloop(url: str, rate: float, seconds: float, conns: int = 64) -> dict[str, float]:
    """`python -m bench.lib.openloop` in its own process: fixed-rate GETs; requests, errors, achieved_rps, p50/p99."""
    argv = module("bench.lib.openloop", url, "--rate", f"{rate:.0f}", "--seconds", str(seconds), "--conns", str(conns))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 4 + 60, cwd=str(ROOT),
                         env=env_with_root())
    if res.returncode != 0:
        raise RuntimeError(f"bench.lib.openloop failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def h2load(url: str, seconds: float, *options: str, cpus: str) -> int:
    """Requests answered 2xx by `h2load OPTIONS -D SECONDS URL` (nghttp2-client) pinned to `cpus`."""
    binary = tool("h2load")
    if binary is None:
        raise SystemExit("h2load is not installed (Debian: nghttp2-client)")
    argv = ["taskset", "-c", cpus, binary, *options, "-D", f"{max(1, round(seconds))}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"status codes: (\d+) 2xx", out)
    if match is None:
        raise RuntimeError(f"h2load printed no status codes:\n{out[-1500:]}")
    return int(match.group(1))


def wrk_post_script(body: str, content_type: str = "application/json") -> str:
    fd, path = tempfile.mkstemp(prefix="bench-wrk-", suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                f'wrk.headers["Content-Type"] = "{content_type}"\n')
    return path


def tool(name: str) -> str | None:
    """Path of an external program (PATH, then /usr/sbin: nginx and haproxy live there), or None."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def has_wrk() -> bool:
    return tool("wrk") is not None


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Pin this process (the load generator) to `cpus` for the block."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
        yield
    finally:
        os.sched_setaffinity(0, old)
