"""Model service throughput: single requests vs V2 batched inputs vs adaptive micro-batching.

    python -m bench.inference [--quick | --smoke]

The model service (`python -m model_service`) is pinned to core 0 (`taskset -c 0`); the load generator
(wrk, -t1) is pinned to core 1. Each scenario runs against MODEL_SERVICE_BATCHING=0 and =1:
  single c=1    POST /api/inference, one connection: latency of one prediction
  single c=64   POST /api/inference, 64 connections: what adaptive micro-batching is for
  v2 x64 c=8    POST /v2/models/titanic/infer with 64 rows per request, 8 connections
predictions/s = requests/s x rows per request. Runs alternate between the two servers; medians shown.
Also the raw in-process model call (TitanicModel.predict and InferenceSession.run) for batch 1 and 64.
Goals: >= 5k predictions/s on one core with batching; p50 < 1 ms for a single request.
`--smoke` (CI): one 1 s run per scenario, no warm-up: it proves the bench runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np

from bench.lib.common import free_port, goal, has_wrk, median, model_service, summary, table, wrk, wrk_post_script

SINGLE = json.dumps({"sex": "female", "age": 29, "pclass": 1})


def v2_body(rows: int) -> str:
    rng = random.Random(7)
    data = [[float(rng.randint(0, 1)), float(rng.randint(1, 80)), float(rng.randint(1, 3))] for _ in range(rows)]
    return json.dumps({"id": "bench", "inputs": [{"name": "input", "shape": [rows, 3], "datatype": "FP32",
                                                  "data": data}]})


def raw_model(iterations: int) -> dict[str, float]:
    from model_service.model import get_model

    os.sched_setaffinity(0, {0})
    model = get_model()
    out = {}
    for n in (1, 64):
        rows = np.random.default_rng(0).uniform(0, 3, size=(n, 3)).astype(np.float32)
        for _ in range(200):
            model.predict(rows)
        for name, fn in (("predict", lambda rows=rows: model.predict(rows)),
                         ("session.run",
                          lambda rows=rows: model.session.run(model.output_names, {model.input_name: rows}))):
            times = []
            for _ in range(iterations):
                t = time.perf_counter_ns()
                fn()
                times.append(time.perf_counter_ns() - t)
            out[f"{name} batch={n}"] = median(times) / 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 1 run x 1 s per scenario, no warm-up")
    args = ap.parse_args()
    if not has_wrk():
        print("inference: wrk is not installed (apt-get install -y wrk); skipped")
        summary("inference", {"skipped": "wrk missing"})
        return 0
    if (os.cpu_count() or 1) < 2:
        print("inference: needs 2 cores (server on core 0, load on core 1); skipped")
        summary("inference", {"skipped": "1 core"})
        return 0
    runs = 1 if args.smoke else 2 if args.quick else 3
    seconds = 1 if args.smoke else 2 if args.quick else 5
    print(f"model service on core 0, wrk -t1 on core 1; {runs} runs x {seconds}s per scenario, medians")
    scripts = {"single": wrk_post_script(SINGLE), "v2x64": wrk_post_script(v2_body(64))}
    scenarios = [("single c=1", "/api/inference", "single", 1, 1), ("single c=64", "/api/inference", "single", 64, 1),
                 ("v2 x64 c=8", "/v2/models/titanic/infer", "v2x64", 8, 64)]
    results: dict[str, dict[str, list[dict]]] = {s[0]: {"0": [], "1": []} for s in scenarios}
    try:
        ports = {"0": free_port(), "1": free_port()}
        servers = {}
        try:
            for b, port in ports.items():
                servers[b] = model_service(port, cpus="0", MODEL_SERVICE_BATCHING=b)
            for port in ([] if args.smoke else ports.values()):  # warm
                wrk(f"http://127.0.0.1:{port}/api/inference", threads=1, conns=8, seconds=1,
                    script=scripts["single"], cpus="1")
            for i in range(runs):
                for name, path, script, conns, rows in scenarios:
                    for b in (("0", "1") if i % 2 == 0 else ("1", "0")):
                        r = wrk(f"http://127.0.0.1:{ports[b]}{path}", threads=1, conns=conns, seconds=seconds,
                                script=scripts[script], cpus="1")
                        r["preds"] = r["rps"] * rows
                        results[name][b].append(r)
        finally:
            for s in servers.values():
                s.stop()
    finally:
        for p in scripts.values():
            os.unlink(p)

    rows_out, summ = [], {}
    for name, _, _, _, nrows in scenarios:
        for b in ("0", "1"):
            rs = results[name][b]
            m = {"preds_per_s": median([r["preds"] for r in rs]), "rps": median([r["rps"] for r in rs]),
                 "p50_ms": median([r.get("p50", float("nan")) for r in rs]),
                 "p99_ms": median([r.get("p99", float("nan")) for r in rs]),
                 "errors": sum(r["errors"] + r["non2xx"] for r in rs)}
            summ[f"{name} batching={b}"] = m
            rows_out.append([name, "on" if b == "1" else "off", nrows, m["rps"], m["preds_per_s"], m["p50_ms"],
                             m["p99_ms"], int(m["errors"])])
    table(["scenario", "micro-batching", "rows/req", "req/s", "predictions/s", "p50 ms", "p99 ms", "errors"], rows_out,
          title="model service on one core (MODEL_SERVICE_BATCHING=0/1)")

    raw = raw_model(50 if args.smoke else 500 if args.quick else 3000)
    table(["call (in-process, core 0)", "median us"], [[k, v] for k, v in raw.items()],
          title="raw onnxruntime")

    micro = summ["single c=64 batching=1"]["preds_per_s"]
    v2 = max(summ["v2 x64 c=8 batching=1"]["preds_per_s"], summ["v2 x64 c=8 batching=0"]["preds_per_s"])
    single_p50 = median([summ["single c=1 batching=0"]["p50_ms"], summ["single c=1 batching=1"]["p50_ms"]])
    single_p50_off = summ["single c=1 batching=0"]["p50_ms"]
    print()
    print("  " + goal(f"adaptive micro-batching, single-row requests: {micro:,.0f} predictions/s (goal >= 5k)",
                      micro >= 5000))
    print("  " + goal(f"V2 batched inputs (64 rows/request): {v2:,.0f} predictions/s (goal >= 5k)", v2 >= 5000))
    on_p50 = summ["single c=1 batching=1"]["p50_ms"]
    print("  " + goal(f"single request p50, batching off = {single_p50_off:.3f} ms (goal < 1 ms)",
                      single_p50_off < 1.0))
    print("  " + goal(f"single request p50, batching on (the default) = {on_p50:.3f} ms (goal < 1 ms; the batcher "
                      f"is adaptive, a lone request does not wait)", on_p50 < 1.0))
    micro_gain = micro / summ["single c=64 batching=0"]["preds_per_s"]
    print(f"  micro-batching under 64 concurrent single requests: x{micro_gain:.2f} predictions/s vs batching off")
    summary("inference", {"quick": args.quick, "smoke": args.smoke, "scenarios": summ, "raw_us": raw,
                          "micro_batching_preds_per_s": micro,
                          "v2_batched_preds_per_s": v2, "single_p50_ms_batching_off": single_p50_off,
                          "single_p50_ms_median_both": single_p50, "goal_5k_met_micro": micro >= 5000,
                          "goal_5k_met_v2": v2 >= 5000, "goal_p50_met_batching_off": single_p50_off < 1.0,
                          "goal_p50_met_batching_on": on_p50 < 1.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
