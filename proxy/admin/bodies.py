"""The admin API's request bodies: one pydantic model each, which both validates a request and makes its
OpenAPI schema (`model_json_schema`), so the document states exactly what the code enforces.

Every number a client can set here is bounded, in seconds; the upper bounds are the operator's
(`admin.max_sleep_after`, `admin.max_drain`, `admin.exec_timeout`), so the models are made per admin
config. A refusal names the field, its unit and its bounds in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from proxy.errors import InvalidInput

if TYPE_CHECKING:
    from proxy.config.admin import Admin

__all__ = ["Bodies", "EXEC_TIMEOUT_MIN", "SLEEP_AFTER_MIN", "bodies_for", "validate"]

SLEEP_AFTER_MIN = 1.0  # a shorter idle timeout only makes a key loop start -> stop (issue 23)
EXEC_TIMEOUT_MIN = 0.1
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
NO_NUL = r"^[^\x00]*$"
STRICT = ConfigDict(strict=True, allow_inf_nan=False)  # JSON numbers only: no "5", no true, no NaN


def _closed_keys(schema: dict[str, Any]) -> None:
    """pydantic says a dict's key rule as `patternProperties`, which lets other keys through; the code
    refuses them, so the document says `propertyNames` (and the value rule for every property)."""
    for variant in schema.get("anyOf", [schema]):
        if (patterns := variant.pop("patternProperties", None)) is not None:
            (pattern, values), = patterns.items()
            variant["propertyNames"] = {"pattern": pattern}
            variant["additionalProperties"] = values


def _seconds(low: float, high: float, what: str, default: float | None = None) -> Any:
    return Field(default=default, ge=low, le=high, description=f"{what}, in seconds ({low:g} to {high:g})")


@dataclass(frozen=True)
class Bodies:
    """The models of one admin config, by the OpenAPI schema name an `Operation` names, and each field's
    refusal (the unit and bounds, from the same numbers)."""

    models: dict[str, type[BaseModel]]
    hints: dict[str, str]


@lru_cache(maxsize=8)
def _bodies(max_sleep_after: float, max_drain: float, stop_drain: float, exec_timeout: float) -> Bodies:
    env = Annotated[dict[Annotated[str, StringConstraints(pattern=ENV_NAME)],
                         Annotated[str, StringConstraints(pattern=NO_NUL)]] | None,
                    Field(default=None, json_schema_extra=_closed_keys,
                          description="environment added to this start (over the class's `env`); only when the key "
                                      "is stopped (else 409): a running instance keeps its environment")]
    models: dict[str, type[BaseModel]] = {
        "Start": create_model("Start", __config__=STRICT, env=env),
        "Drain": create_model("Drain", __config__=STRICT, drain=(float, _seconds(
            0, max_drain, "how long the requests in flight get to end", stop_drain))),
        "SleepAfter": create_model("SleepAfter", __config__=STRICT, seconds=(float | None, Field(
            ge=SLEEP_AFTER_MIN, le=max_sleep_after,
            description=f"idle seconds before the key is stopped ({SLEEP_AFTER_MIN:g} to {max_sleep_after:g}); "
                        f"null: the class's sleep_after"))),
        "Exec": create_model("Exec", __config__=STRICT, command=(list[str], Field(
            min_length=1, description="argv, run in the instance as is (no shell)")),
            timeout=(float, _seconds(EXEC_TIMEOUT_MIN, exec_timeout, "the command's timeout", exec_timeout))),
    }
    hints = {
        "env": 'env must be an object of strings (no NUL), e.g. {"env": {"MODE": "batch"}}',
        "drain": f"drain must be a number of seconds, at least 0 and at most {max_drain:g} (admin.max_drain)",
        "seconds": f"seconds must be null (the class's sleep_after) or a number of seconds, at least "
                   f"{SLEEP_AFTER_MIN:g} and at most {max_sleep_after:g} (admin.max_sleep_after)",
        "command": 'expected {"command": ["argv0", "arg", ...]} (a non-empty list of strings)',
        "timeout": f"timeout must be a number of seconds, at least {EXEC_TIMEOUT_MIN:g} and at most "
                   f"{exec_timeout:g} (admin.exec_timeout)",
    }
    return Bodies(models, hints)


def bodies_for(admin: Admin) -> Bodies:
    return _bodies(admin.max_sleep_after, admin.max_drain, admin.stop_drain, admin.exec_timeout)


def validate(bodies: Bodies, name: str, body: dict[str, Any]) -> BaseModel:
    """`body` as the model `name`, or InvalidInput naming the first wrong field with its unit and bounds."""
    try:
        return bodies.models[name].model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = error["loc"]
        field = str(loc[0]) if loc else ""
        if field == "env" and loc[-1] == "[key]":
            raise InvalidInput(f"env: invalid variable name {error['input']!r} (letters, digits, '_'; not a digit "
                               f"first)") from None
        got = f" (got {repr(error['input'])[:40]})" if error["type"] != "missing" and field != "env" else ""
        raise InvalidInput(bodies.hints.get(field, error["msg"]) + got) from None
