"""Scalar types of config.yaml (durations, sizes, schedules, argv, env) as pydantic field types.

Each type is one `Annotated` alias: a parser that raises ValueError with a user-facing reason (pydantic
adds the field path), plus a `Unit` marker the README table renderer uses to print defaults the way a
user writes them (`5ms`, `10MiB`). `ConfigError` lives here so the parsers and the loader share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from croniter import croniter
from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

__all__ = ["Argv", "ConfigError", "Duration", "EnvMap", "Key", "Name", "NonEmptyStr", "PositiveDuration",
           "Schedule", "ScheduleValue", "Size", "TupleOf", "Unit", "UrlPath", "check_key", "format_value",
           "parse_duration", "parse_schedule", "parse_size"]


class ConfigError(ValueError):
    """A config mistake; `field` is the path of what to fix (`containers.w.port`, `routes[0].key`).

    `problems` lists every (field, reason) found, first one first, so a user can fix them in one go.
    """

    def __init__(self, field_name: str, reason: str, problems: tuple[tuple[str, str], ...] = ()) -> None:
        self.field = field_name
        self.reason = reason
        self.problems = problems or ((field_name, reason),)
        super().__init__("\n".join(f"{f}: {r}" for f, r in self.problems))


@dataclass(frozen=True)
class Schedule:
    """A 5-field cron expression or a fixed interval (seconds)."""

    cron: str | None = None
    every: float | None = None


@dataclass(frozen=True)
class Unit:
    """Marks a field type's unit, so docs print `0.005` as `5ms` and `10485760` as `10MiB`."""

    kind: str  # "duration" or "size"


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `2.5`, `"500ms"`, `"30s"`, `"5m"`, `"1h"`; never negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration like 30, '500ms', '5m', got {value!r}")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 30, '500ms', '5m', got {value!r}")
        seconds = float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    else:
        seconds = float(value)
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from `1048576`, `"512MiB"`, `"1GiB"`; always positive."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size like 1048576 or '512MiB', got {value!r}")
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected a size like 1048576 or '512MiB', got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    else:
        size = value
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def parse_schedule(value: Any) -> Schedule:
    """`"*/2 * * * *"` (cron, checked by croniter) or `"30s"` / `30` (a positive interval)."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str) and len(value.split()) == 5:
        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return Schedule(cron=value)
    every = parse_duration(value)
    if every <= 0:
        raise ValueError("an interval must be positive")
    return Schedule(every=every)


def _argv(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings (or one string split on spaces)")


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError("invalid environment variable name")
    return name


def _env_value(value: Any) -> str:
    """YAML scalars become the strings a process sees; booleans as `true`/`false`, not `True`."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"expected a scalar value, got {type(value).__name__}")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("letters, digits, '_', '.', '-' only (at most 63, starting with a letter or digit)")
    return value


def check_key(value: str) -> str:
    """A fixed instance key, by the router's rule (`proxy.keys.validate_key`)."""
    from proxy.keys import validate_key  # one rule for keys, shared with the router

    if validate_key(value) is not None:
        raise ValueError(f"invalid key {value!r}")
    return value


def _url_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    return value


def _as_tuple(value: Any) -> Any:
    """YAML lists feed tuple fields (strict mode alone would reject a list for a tuple)."""
    return tuple(value) if isinstance(value, list) else value


T = TypeVar("T")

Duration = Annotated[float, PlainValidator(parse_duration), Unit("duration")]
PositiveDuration = Annotated[Duration, Field(gt=0)]
Size = Annotated[int, PlainValidator(parse_size), Unit("size")]
ScheduleValue = Annotated[Schedule, PlainValidator(parse_schedule)]
Argv = Annotated[tuple[str, ...] | None, PlainValidator(_argv)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
EnvMap = dict[Annotated[str, AfterValidator(_env_name)], Annotated[str, PlainValidator(_env_value)]]
Name = Annotated[str, AfterValidator(_name)]
Key = Annotated[str, AfterValidator(check_key)]
UrlPath = Annotated[str, AfterValidator(_url_path)]
TupleOf = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]


def format_value(value: Any, unit: str | None = None) -> str:
    """A default as a user would write it in config.yaml (used by the docs renderer)."""
    if unit == "duration":
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    if unit == "size":
        for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value % scale == 0:
                return f"{value // scale}{suffix}"
        return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = f"{value:.12f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)
