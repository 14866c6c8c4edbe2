"""schemathesis against the admin API (with and without the token) and the model service, from their own
OpenAPI documents, as CI runs it: a few examples per operation and phase (bench/fuzz.py; `python -m bench.fuzz
--examples 500` is the longer run). Any 5xx, undeclared status or content type, response schema violation,
schema-invalid request accepted, schema-valid request refused (except as bench/fuzz.toml says) or a request
hanging past its timeout fails.
"""

from __future__ import annotations

import pytest

from bench.fuzz import run

EXAMPLES = 25  # per operation and phase: about a minute on the stub backend


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_either_api(tmp_path):
    results = run(EXAMPLES, seed=23, log_dir=str(tmp_path))
    assert [r.name for r in results] == ["admin (token)", "admin (no token)", "model service"]
    failed = [f"--- {r.name} (exit code {r.code})\n{r.output[-6000:]}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    for result in results:  # the runs really tested something
        assert "Tested:" in result.output and "passed" in result.output, result.output[-2000:]
