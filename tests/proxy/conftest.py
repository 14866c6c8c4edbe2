"""Fixtures the proxy tests share: the conformance suites' recording upstream (tests/support/conformance.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.conformance import RecordingUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    """One RecordingUpstream per module, behind both fronts (lazy-proxy and nginx) of a conformance suite."""
    server = RecordingUpstream().start()
    yield server
    server.stop()
