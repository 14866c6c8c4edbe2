"""Instructions per request of a proxy in front of an instance that closes every connection, by callgrind.

    python -m bench.closing_instr [--variants lazy-proxy,floor-raw] [--requests N] [--top K] [--upstream KIND]

`bench.closing_floor --split` measures CPU per request under wrk, which swings by tens of µs between rounds on
this shared 2-core VM. This counts instead: busybox httpd (the instance that closes) runs as usual, the proxy
variant runs under valgrind's callgrind, and one keep-alive client sends GET requests one after another (so
every request costs its own loop turns: the worst case for per-request overheads). After a warm-up the
counters are zeroed (`callgrind_control --zero`), N requests are sent and the counters dumped: the count is
the proxy's own work for exactly N requests (connect, send, read to EOF, close, and all of its Python),
repeatable to ~0.5 %. `--top K` prints the K C functions with the most inclusive instructions per request
(the interpreter's own frames left out), which names the sockets, uvloop and httptools calls a variant pays
for. `--upstream static` (nginx, keep-alive) instead of busybox gives lazy-proxy's count for the same answer on a
pooled connection: the difference is what a closing instance costs beyond a keep-alive one. Needs valgrind
(Debian: apt-get install valgrind); ~1 min per variant.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.lib.common import PY, free_port, write_config
from bench.overhead import PATH, upstream_server

REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n".encode()
# Interpreter frames, type machinery and allocation: in every inclusive path, they say nothing about a step.
_NOISE = re.compile(r"^(_?Py|PyObject_|_PyEval|_PyObject|_PyFunction|method_vectorcall|cfunction_|vectorcall|"
                    r"object_vacall|slot_tp|type_call|0x|\?\?\?|\(below main\)|_start|main|__libc_start|pymain|"
                    r"run_|builtin_exec|exec_code|Py_|_Py_|_PyRun|PyRun|cfunction|method_)")


def argv_for(variant: str, port: int, upstream_port: int, workdir: Path) -> list[str]:
    if variant == "floor-raw":
        return [PY, "-m", "bench.closing_floor", "--port", str(port), "--upstream-port", str(upstream_port)]
    if variant in ("lazy-proxy", "lazy-proxy-nolog"):
        config = {"logging": {"requests": variant == "lazy-proxy"},
                  "containers": {"svc": {"sleep_after": 0}},
                  "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}]}
        path = write_config(config)
        return [PY, "-m", "bench.lib.launcher", "--config", path, "--port", str(port), "--uvloop", "1",
                "--upstream", f"http://127.0.0.1:{upstream_port}"]
    raise SystemExit(f"closing_instr: unknown variant {variant!r} (lazy-proxy, lazy-proxy-nolog, floor-raw)")


class KeepAlive:
    """One client connection; each request's answer read by its Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def get(self) -> bytes:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.sendall(REQUEST)
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the proxy closed the connection")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", data[:end + 2])
                if found and len(data) >= end + 4 + int(found.group(1)):
                    return data

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get().startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                self.sock = None
            if time.monotonic() > deadline:
                raise SystemExit("closing_instr: the proxy did not answer 200 in time")
            time.sleep(0.5)


def measure(variant: str, requests: int, warmup: int, top: int, workdir: Path, upstream_port: int) -> dict:
    port = free_port()
    out = workdir / f"{variant}.callgrind"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
           *argv_for(variant, port, upstream_port, workdir)]
    log = open(workdir / f"{variant}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    try:
        client = KeepAlive(port)
        client.wait_up(180)
        for _ in range(warmup):
            client.get()
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        for _ in range(requests):
            client.get()
        subprocess.run(["callgrind_control", "--dump=measured", str(proc.pid)], check=True, capture_output=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()
    dumps = glob.glob(f"{out}.{proc.pid}.*")  # the dump after the zero: out.PID.1 (the one at exit is out.PID)
    if not dumps:
        raise SystemExit(f"closing_instr: {variant}: callgrind wrote no dump (see {workdir / variant}.log)")
    dump = max(dumps, key=lambda p: int(p.rsplit(".", 1)[1]))
    text = Path(dump).read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    total = int(found.group(1)) if found else 0
    result = {"variant": variant, "requests": requests, "instructions_per_request": round(total / requests)}
    if top:
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                                   capture_output=True, text=True, check=True).stdout
        rows = []
        for line in annotated.splitlines():
            m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(?:\S*:)?(\S+)", line)
            if m and not _NOISE.match(m.group(2)):
                rows.append((int(m.group(1).replace(",", "")) / requests, m.group(2)))
        result["top"] = [(round(n), name) for n, name in rows[:top]]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="lazy-proxy,floor-raw")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--top", type=int, default=0, help="print the K C functions with most inclusive instructions")
    ap.add_argument("--upstream", default="busybox", choices=("busybox", "static"),
                    help="busybox httpd (closes every connection) or nginx (keep-alive; floor-raw cannot use it)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("closing_instr: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-closing-instr-") as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        with upstream_server(args.upstream, upstream_port, workdir, None):
            for variant in args.variants.split(","):
                result = measure(variant, args.requests, args.warmup, args.top, workdir, upstream_port)
                results.append(result)
                print(f"{variant:18} {result['instructions_per_request']:>9,} instructions per request (callgrind, "
                      f"{args.requests} sequential requests, upstream {args.upstream})")
                for n, name in result.get("top", []):
                    print(f"    {n:>9,}  {name}")
                sys.stdout.flush()
    print("SUMMARY " + json.dumps({"bench": "closing_instr", "upstream": args.upstream, "results": [
        {k: v for k, v in r.items() if k != "top"} for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
