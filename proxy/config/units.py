"""Scalar types of config.yaml (durations, sizes, schedules, argv, env) as pydantic field types.

Each type is one `Annotated` alias: a parser that raises ValueError with a user-facing reason (pydantic
adds the field path), plus a `Unit` marker the README table renderer uses to print defaults the way a
user writes them (`5ms`, `10MiB`). `ConfigError` lives here so the parsers and the loader share it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from croniter import croniter
from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

__all__ = ["DURATION_HINT", "Argv", "BaseUrl", "ConfigError", "Duration", "EnvMap", "HttpUrl", "Key", "Name",
           "NonEmptyStr", "PositiveDuration", "Schedule", "ScheduleValue", "Size", "TupleOf", "Unit", "UrlPath",
           "check_key", "env_name", "env_value", "format_value", "parse_duration", "parse_schedule", "parse_size"]


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


# Go's time.ParseDuration: one or more <number><unit> (`1h30m`, `1.5h`, `2h45m10s`, `500ms`, `300us`); a plain
# number (or a number and one unit with a space, `30 s`) as before. A number alone is seconds.
_DURATION_PART = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_DURATION = re.compile(rf"^\s*(-?)((?:{_DURATION_PART})+)\s*$")
_DURATION_PLAIN = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*$")
_DURATION_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_SCALE = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0,
                   "h": 3600.0, None: 1.0}
DURATION_HINT = "expected a duration like 30, '500ms', '1h30m'"
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `2.5`, `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"1.5h"` (Go's forms); never negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{DURATION_HINT}, got {value!r}")
    if isinstance(value, str):
        seconds = _duration_text(value)
    else:
        seconds = float(value)
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return seconds


def _duration_text(value: str) -> float:
    if plain := _DURATION_PLAIN.match(value):
        return float(plain.group(1)) * _DURATION_SCALE[plain.group(2)]
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{DURATION_HINT}, got {value!r}")
    seconds = sum(float(number) * _DURATION_SCALE[unit] for number, unit in _DURATION_TERM.findall(match.group(2)))
    return -seconds if match.group(1) else seconds


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
    """`"*/2 * * * *"` (cron, checked by croniter) or `"30s"` / `30` (a positive interval).

    A string of several fields that is no duration is taken for a cron expression with the wrong field count,
    which is what its writer most likely meant (`"*/5 * * *"`), and reported so."""
    if isinstance(value, Schedule):
        return value
    fields = value.split() if isinstance(value, str) else []
    if len(fields) == 5:
        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return Schedule(cron=value)
    try:
        every = parse_duration(value)
    except ValueError:
        if len(fields) > 1:
            raise ValueError(f"a cron expression has 5 fields, got {len(fields)}: {value!r}") from None
        raise
    if every <= 0:
        raise ValueError("an interval must be positive")
    return Schedule(every=every)


def _argv(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))  # as compose does: `sh -c 'echo hi; sleep 1'` is three words
        except ValueError as exc:  # shlex: "No closing quotation", "No escaped character"
            raise ValueError(f"cannot split {value!r} like a shell: {str(exc).lower()}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("expected a list of strings (or one string, split with shell quoting)")


def env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError("invalid environment variable name")
    return name


def env_value(value: Any) -> str:
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


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
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
EnvMap = dict[Annotated[str, AfterValidator(env_name)], Annotated[str, PlainValidator(env_value)]]
Name = Annotated[str, AfterValidator(_name)]
Key = Annotated[str, AfterValidator(check_key)]
UrlPath = Annotated[str, AfterValidator(_url_path)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
BaseUrl = Annotated[HttpUrl, AfterValidator(lambda url: url.rstrip("/"))]  # a base the code appends paths to
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
