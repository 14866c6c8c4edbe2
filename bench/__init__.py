"""Benchmarks, run from the repository root as modules: `python -m bench.NAME [--quick | --smoke]`.

`bench/run_all` runs the quick version of each (`--smoke`: tiny parameters, a few seconds each, as
tests/deploy/test_bench_smoke.py runs them so they cannot rot). Each prints one `SUMMARY {json}` line last.
Helpers shared by the benchmarks are in `bench.lib.common`; processes they launch are modules too
(`python -m bench.lib.launcher`, `python -m bench.lib.openloop`).
"""
