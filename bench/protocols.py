"""TLS termination in lazy-proxy side by side with nginx: the TLS half of the protocol benchmarks
(bench/protocols_h2.py has the HTTP/2 and gRPC half).

    python -m bench.protocols [--quick | --smoke] [--rounds N] [--seconds S] [--only handshakes|https]

Method
- Both proxies terminate TLS with the same certificate (trustme: an ECDSA P-256 leaf and its CA), TLS 1.2 and
  1.3 allowed, in front of the same model service over plain HTTP/1.1 (GET /api/health). nginx: one worker,
  `listen ... ssl`, proxy_pass with keepalive, an access log line per request; lazy-proxy: `server.tls`
  (bench.lib.launcher with an external upstream, uvloop, one JSON access line per request to a file).
  Proxies are pinned to core 0; the upstream and the load generators to core 1.
- handshakes: new TLS connections per second, each a full handshake (no session resumption) and one request:
  `openssl s_time -new -www /api/health`, PARALLEL processes at once (C clients: the server is the bottleneck).
- https: requests per second over kept-alive TLS connections: `h2load --h1 -c 32` (HTTP/1.1 over TLS).
- Per variant: the rate and the proxy's CPU microseconds per connection or request (utime+stime of its process
  tree over the run, divided by what completed). Rounds are interleaved (the order alternates); medians.

Goals (issue 26), against nginx measured in the same run: lazy-proxy throughput >= 0.25 x nginx's and CPU per
operation <= 5 x nginx's (a Python proxy against C; the handshake itself is OpenSSL's in both).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from bench.lib.common import (free_port, goal, h2load, median, model_service, proxy, rate_and_cpu, summary, table,
                              tool)
from bench.lib.nginx import FORWARDED, nginx_front, proxy_location, tls_lines

PROXY_CORE, LOAD_CORE = "0", "1"
PATH = "/api/health"
PARALLEL = 16  # s_time processes at once (each one connection at a time: latency-bound alone)
THROUGHPUT_FACTOR, CPU_FACTOR = 0.25, 5.0


@dataclass(frozen=True)
class Mode:
    rounds: int
    seconds: int


FULL, QUICK, SMOKE = Mode(5, 10), Mode(3, 4), Mode(1, 1)

def certificate(workdir: Path) -> tuple[Path, Path]:
    """A leaf for 127.0.0.1/localhost and its key, made fresh (trustme: ECDSA P-256)."""
    import trustme

    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def nginx(upstream_port: int, workdir: Path, cert: Path, key: Path) -> ContextManager[tuple[int, int]]:
    """nginx with one worker terminating TLS on the returned port; (port, pid)."""
    return nginx_front(upstream_port, workdir, listen="ssl", server=tls_lines(cert, key), connections=4096,
                       locations=proxy_location(*FORWARDED), cpus=PROXY_CORE)


@contextlib.contextmanager
def lazy(upstream_port: int, workdir: Path, cert: Path, key: Path) -> Iterator[tuple[int, int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"server": {"tls": {"cert": str(cert), "key": str(key)}},
              "containers": {"svc": {"sleep_after": 0}},
              "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}]}
    with proxy(config, port, upstream=f"http://127.0.0.1:{upstream_port}", cpus=PROXY_CORE,
               log=str(workdir / "lazy.log")) as server:
        yield port, server.pid


# ---------------------------------------------------------------- load generators


def _binary(name: str, package: str) -> str:
    binary = tool(name)
    if binary is None:
        raise SystemExit(f"{name} is not installed (Debian: {package})")
    return binary


def handshakes(port: int, seconds: int) -> int:
    """New TLS connections completed (each: a full handshake and GET PATH) by PARALLEL `openssl s_time -new`."""
    argv = ["taskset", "-c", LOAD_CORE, _binary("openssl", "openssl"), "s_time", "-connect", f"127.0.0.1:{port}",
            "-new", "-time", str(seconds), "-www", PATH]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(PARALLEL)]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        match = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per connection", out)
        if match is None or int(match.group(2)) == 0:
            raise RuntimeError(f"openssl s_time fetched nothing:\n{out[-1500:]}")
        total += int(match.group(1))
    return total


def https(port: int, seconds: int) -> int:
    """Requests answered 2xx by `h2load --h1 -c 32` over kept-alive TLS connections in `seconds`."""
    return h2load(f"https://127.0.0.1:{port}{PATH}", seconds, "--h1", "-c", "32", cpus=LOAD_CORE)


def measure(pid: int, load: Callable[[], int]) -> dict[str, float]:
    rate, cpu_us = rate_and_cpu(pid, load)
    return {"rate": rate, "cpu_us": cpu_us}


LOADS: dict[str, Callable[[int, int], int]] = {"handshakes": handshakes, "https": https}


def bench(mode: Mode, work: Path, kinds: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{kind: {variant: {rate, cpu_us}}}, medians over the rounds."""
    cert, key = certificate(work)
    upstream_port = free_port()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {"nginx": [], "lazy-proxy": []} for k in kinds}
    with model_service(upstream_port, cpus=LOAD_CORE), \
            nginx(upstream_port, work / "nginx", cert, key) as (nport, npid), \
            lazy(upstream_port, work / "lazy", cert, key) as (lport, lpid):
        targets = {"nginx": (nport, npid), "lazy-proxy": (lport, lpid)}
        for port, _ in targets.values():
            https(port, 1)  # warm: upstream connections, the key's start
        for r in range(mode.rounds):
            for kind in kinds:
                for name in sorted(targets, reverse=bool(r % 2)):
                    port, pid = targets[name]
                    runs[kind][name].append(measure(pid, lambda p=port, k=kind: LOADS[k](p, mode.seconds)))
    return {kind: {name: {m: median([x[m] for x in results]) for m in ("rate", "cpu_us")}
                   for name, results in variants.items()} for kind, variants in runs.items()}


def report(kind: str, res: dict[str, dict[str, float]]) -> None:
    lazy_r, nginx_r = res["lazy-proxy"], res["nginx"]
    ratio = lazy_r["rate"] / nginx_r["rate"] if nginx_r["rate"] else float("nan")
    cpu = lazy_r["cpu_us"] / nginx_r["cpu_us"] if nginx_r["cpu_us"] else float("nan")
    unit = "handshakes/s" if kind == "handshakes" else "req/s"
    table(["variant", unit, f"CPU us/{'conn' if kind == 'handshakes' else 'req'}"],
          [[n, round(v["rate"]), round(v["cpu_us"], 1)] for n, v in res.items()],
          title=f"TLS {kind}: lazy-proxy vs nginx")
    print(goal(f"{kind}: throughput {ratio:.2f} x nginx (>= {THROUGHPUT_FACTOR})", ratio >= THROUGHPUT_FACTOR))
    print(goal(f"{kind}: CPU/op {cpu:.2f} x nginx (<= {CPU_FACTOR})", cpu <= CPU_FACTOR))
    summary(f"protocols_tls_{kind}", {"results": res, "throughput_ratio": ratio, "cpu_ratio": cpu})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--only", choices=list(LOADS))
    args = ap.parse_args()
    mode = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = Mode(args.rounds or mode.rounds, args.seconds or mode.seconds)
    kinds = [args.only] if args.only else list(LOADS)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        results = bench(mode, Path(tmp), kinds)
    for kind in kinds:
        report(kind, results[kind])
    summary("protocols", {"results": results, "mode": {"rounds": mode.rounds, "seconds": mode.seconds}})


if __name__ == "__main__":
    main()
