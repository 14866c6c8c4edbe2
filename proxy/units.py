"""Scalar values in config.yaml: durations, sizes and schedules, parsed with the field name at hand."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from croniter import croniter


class ConfigError(ValueError):
    """A config mistake; `field` is the dotted path of what to fix."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class Schedule:
    """A 5-field cron expression or a fixed interval (seconds)."""

    cron: str | None = None
    every: float | None = None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_duration(value: Any, where: str) -> float:
    """Seconds from `30`, `2.5`, `"50ms"`, `"5m"`, `"1h"`."""
    if isinstance(value, bool):
        raise ConfigError(where, "expected a duration like 30, '500ms', '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(where, f"expected a duration like 30, '500ms', '5m', got {value!r}")
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
        seconds = float(match.group(1)) * scale
    if seconds < 0:
        raise ConfigError(where, "must not be negative")
    return seconds


def parse_size(value: Any, where: str) -> int:
    """Bytes from `1048576`, `"512MiB"`, `"1GiB"`."""
    if isinstance(value, bool):
        raise ConfigError(where, "expected a size like 1048576 or '512MiB'")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(where, f"expected a size like 1048576 or '512MiB', got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    if size <= 0:
        raise ConfigError(where, "must be positive")
    return size


def parse_schedule(value: Any, where: str) -> Schedule:
    """`"*/2 * * * *"` (cron) or `"30s"` / `30` (interval)."""
    if isinstance(value, str) and len(value.split()) == 5:
        if not croniter.is_valid(value):
            raise ConfigError(where, f"invalid cron expression {value!r}")
        return Schedule(cron=value)
    every = parse_duration(value, where)
    if every <= 0:
        raise ConfigError(where, "interval must be positive")
    return Schedule(every=every)
