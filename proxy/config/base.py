"""Plumbing shared by every config section: the strict base model, doc metadata, and errors.

Kept apart from proxy/config/schema.py (the schema itself) so that file reads as one declaration per field.
pydantic reports every problem with its location; `config_error` turns them into one `ConfigError`
whose field is written the way a user finds it in YAML (`routes[0].key`, `containers.w.port`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from proxy.config.units import ConfigError

__all__ = ["FIELD_ERROR", "Section", "config_error", "field_error", "none_means_default", "shown"]

FIELD_ERROR = "config_field"  # a model-level check that names one of its fields (see field_error)


def field_error(at: tuple[str | int, ...], reason: str) -> PydanticCustomError:
    """An error a model validator raises for one of its fields: `at` is appended to the model's path."""
    return PydanticCustomError(FIELD_ERROR, "{reason}", {"reason": reason, "at": at})


def shown(default: str) -> dict[str, Any]:
    """`json_schema_extra` for a default the docs cannot print as a value (`the class name`)."""
    return {"doc_default": default}


def none_means_default(data: Any) -> Any:
    """`server:` (None) is an empty section; a key with no value takes its default."""
    if data is None:
        return {}
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if v is not None}
    return data


class Section(BaseModel):
    """Base of every config section: strict, closed, immutable; an empty YAML value means defaults."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        return none_means_default(data)


def _location(loc: tuple[str | int, ...]) -> str:
    """`('routes', 0, 'key')` -> `routes[0].key`; union tags (`<custom>`) and `[key]` markers dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]" or (part.startswith("<") and part.endswith(">")):
            continue
        else:
            out += f".{part}" if out else part
    return out or "config"


def _reason(error: Any) -> str:
    kind, message, value = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    if kind in ("value_error", "assertion_error"):
        return str(message.split(", ", 1)[1] if ", " in message else message)
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {type(value).__name__}"
    if kind in ("dict_type", "model_type"):
        return f"expected a mapping, got {type(value).__name__}"
    if kind == FIELD_ERROR or isinstance(value, (dict, list, tuple)) or value is None:
        return str(message)
    return f"{message}, got {value!r}"


def config_error(exc: ValidationError) -> ConfigError:
    """Every pydantic error as (field path, reason); the first one is the ConfigError's field."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == FIELD_ERROR:
            loc += tuple(error["ctx"]["at"])
        problems.append((_location(loc), _reason(error)))
    return ConfigError(problems[0][0], problems[0][1], tuple(problems))
