"""Fuzz the admin API and the model service with schemathesis, from their own OpenAPI documents.

    python -m bench.fuzz [--examples 500] [--seed N] [--smoke]

Three runs of `schemathesis run` (v4's CLI; tested with 4.32) against real processes: the admin listener of
`python -m proxy` on the stub backend with the token, the same without it (every mutation must be a 401),
and `python -m model_service`. Each run uses every check (a 5xx, a response or status the document does not
declare, a schema-invalid request accepted, a hang past --request-timeout ...: bench/fuzz.toml says the one
exception) and the coverage, fuzzing and stateful phases (the admin document links start -> state/stop).
tests/proxy/test_fuzz.py runs this with a few examples per operation in CI; here, the longer run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench.lib.common import Server, free_port, model_service, module, summary, table, write_config

TOKEN = "fuzz-admin-token-0123456789"
SETTINGS = Path(__file__).with_name("fuzz.toml")
PROXY_CONFIG: dict[str, Any] = {
    "admin": {"token": TOKEN, "exec": True, "on_proxy_port": []},
    "backend": {"type": "stub"},
    # Many keys: the fuzzer starts one per key it makes up; capacity is not what it is testing.
    "containers": {"svc": {"image": "model_service", "max_instances": 100000, "sleep_after": "10m"}},
}


@dataclass
class Target:
    name: str
    url: str  # the OpenAPI document
    headers: tuple[str, ...] = ()


@dataclass
class Result:
    name: str
    code: int
    seconds: float
    output: str

    @property
    def passed(self) -> bool:
        return self.code == 0


def schemathesis() -> str:
    """The `schemathesis` command next to this Python (the venv's), else on PATH."""
    local = Path(sys.executable).with_name("schemathesis")
    found = str(local) if local.exists() else shutil.which("schemathesis")
    if found is None:
        raise SystemExit("schemathesis is not installed: pip install 'lazy-proxy[test]'")
    return found


def fuzz(target: Target, examples: int, seed: int, request_timeout: float = 30.0) -> Result:
    argv = [schemathesis(), "--config-file", str(SETTINGS), "run", target.url,
            "--max-examples", str(examples), "--seed", str(seed), "--request-timeout", str(request_timeout),
            "--phases", "examples,coverage,fuzzing,stateful", "--generation-database", "none", "--no-color",
            "--workers", "1", *[arg for header in target.headers for arg in ("-H", header)]]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as cwd:  # nothing left in the tree
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1800)
    return Result(target.name, done.returncode, time.monotonic() - began, done.stdout + done.stderr)


def run(examples: int, seed: int, log_dir: str | None = None) -> list[Result]:
    log_dir = log_dir or tempfile.mkdtemp(prefix="fuzz-logs-")
    port, admin_port, model_port = free_port(), free_port(), free_port()
    config = write_config(PROXY_CONFIG)
    proxy_argv = module("proxy", "--config", config, "--port", str(port), "--admin-port", str(admin_port))
    admin = f"http://127.0.0.1:{admin_port}"
    results = []
    try:
        with Server(proxy_argv, f"{admin}/health", log=os.path.join(log_dir, "proxy.log")), \
                model_service(model_port):
            for target in (Target("admin (token)", f"{admin}/admin/openapi.json", (f"Authorization: Bearer {TOKEN}",)),
                           Target("admin (no token)", f"{admin}/admin/openapi.json"),
                           Target("model service", f"http://127.0.0.1:{model_port}/openapi.json")):
                results.append(fuzz(target, examples, seed))
    finally:
        os.unlink(config)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--smoke", action="store_true", help="a few examples (as CI runs)")
    args = parser.parse_args(argv)
    examples = 10 if args.smoke else args.examples
    results = run(examples, args.seed)
    for result in results:
        if not result.passed:
            print(f"--- {result.name}: schemathesis exit code {result.code}\n{result.output}", file=sys.stderr)
    table(["target", "result", "seconds"], [(r.name, "passed" if r.passed else f"FAILED ({r.code})",
                                             round(r.seconds, 1)) for r in results],
          title=f"schemathesis, {examples} examples per operation, seed {args.seed}")
    summary("fuzz", {"examples": examples, "seed": args.seed, "passed": all(r.passed for r in results),
                     "seconds": {r.name: round(r.seconds, 1) for r in results}})
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
