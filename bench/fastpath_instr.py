"""Instructions per warm request of the fast path, counted by valgrind's callgrind: resolves steps below 1 µs.

    python -m bench.fastpath_instr [--answer keepalive|plain|close|http10] [--request wrk|browser] [--no-log]
                                   [--new-blocks] [--runs N1,N2]

`bench.fastpath_cpu`'s best-of-5 CPU time swings by several µs between runs on a shared VM, more than most single
pieces of the warm path cost, and VMs often have no hardware counters for `perf stat`. Callgrind counts the
instructions the same harness executes, deterministically to ~0.1 %. Two runs with N1 and N2 requests cancel
start-up and shutdown: (Ir(N2) - Ir(N1)) / (N2 - N1). Needs valgrind (Debian: `apt-get install valgrind`);
the interpreter runs ~50x slower under it (~90 s for the default runs). Compare two checkouts by running it in
each (interleaved): on this 2-core VM 1,000 instructions are ~0.2 µs of `bench.fastpath_cpu`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys


def instructions(requests: int, answer: str, no_log: bool, request: str = "wrk", new_blocks: bool = False) -> int:
    """Instructions callgrind counted for one `bench.fastpath_cpu` run of `requests` requests, start-up included."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
           "bench.fastpath_cpu", "--answer", answer, "--request", request, "--requests", str(requests), "--repeat", "1"]
    cmd += (["--no-log"] if no_log else []) + (["--new-blocks"] if new_blocks else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"fastpath_instr: callgrind printed no instruction count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answer", default="keepalive", choices=("keepalive", "plain", "close", "http10"))
    ap.add_argument("--request", default="wrk", choices=("wrk", "browser"))
    ap.add_argument("--no-log", action="store_true", help="logging.requests: false")
    ap.add_argument("--new-blocks", action="store_true", help="a header block not seen before in each request")
    ap.add_argument("--runs", default="1000,6000", help="the two request counts N1,N2 (N2 > N1)")
    args = ap.parse_args()
    small, large = (int(n) for n in args.runs.split(","))
    if large <= small:
        ap.error("--runs: N2 must be larger than N1")
    if shutil.which("valgrind") is None:
        print("fastpath_instr: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    per_request = (instructions(large, args.answer, args.no_log, args.request, args.new_blocks)
                   - instructions(small, args.answer, args.no_log, args.request, args.new_blocks)) / (large - small)
    log = "off" if args.no_log else "on"
    print(f"request {args.request}{' (new blocks)' if args.new_blocks else ''}, answer {args.answer}, "
          f"request log {log}: "
          f"{per_request:,.0f} instructions per request (callgrind)")
    print("SUMMARY " + json.dumps({"bench": "fastpath_instr", "request": args.request, "new_blocks": args.new_blocks,
                                   "answer": args.answer,
                                   "request_log": log, "runs": [small, large],
                                   "instructions_per_request": round(per_request)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
