"""`${VAR}` in config.yaml, as docker compose interpolates its files, so secrets and per-host values stay out of it.

Applied to the string values of the parsed YAML (never to keys), so YAML quoting works as in compose:

    ${VAR}  $VAR          the variable's value ("" when unset, with one warning naming it)
    ${VAR:-default}       default when VAR is unset or empty   ${VAR-default}  only when unset
    ${VAR:?message}       an error when VAR is unset or empty  ${VAR?message}  only when unset
    ${VAR:+other}         other when VAR is set and not empty  ${VAR+other}    when set
    $$                    a literal `$`

A default or message may itself contain `${...}`. A `$` followed by anything else is an error (as in compose:
write `$$`). Values whose text changed are remembered (`Interpolated.paths`), so a field that wants a number or
a boolean can take `port: ${PORT:-8080}` (see `typed`): compose casts by its schema in the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.units import ConfigError

__all__ = ["Interpolated", "interpolate", "typed"]

Path = tuple[str | int, ...]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.DOTALL)


def where(path: Path) -> str:
    """`('containers', 'w', 'env', 'A')` -> `containers.w.env.A`; list indexes as `[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


@dataclass
class Interpolated:
    """The document with every `${...}` replaced; which values changed; which variables were unset."""

    data: Any
    paths: set[Path] = field(default_factory=set)
    unset: list[str] = field(default_factory=list)


class _Template:
    """One string's substitution; raises ConfigError (at `path`) for a required variable or a stray `$`."""

    def __init__(self, env: Mapping[str, str], path: Path, unset: list[str]) -> None:
        self.env, self.path, self.unset = env, path, unset

    def error(self, reason: str) -> ConfigError:
        return ConfigError(where(self.path), reason)

    def substitute(self, text: str) -> str:
        out: list[str] = []
        i = 0
        while (at := text.find("$", i)) >= 0:
            out.append(text[i:at])
            following = text[at + 1:at + 2]
            if following == "$":
                out.append("$")
                i = at + 2
            elif following == "{":
                end = self._closing(text, at + 2)
                out.append(self._braced(text[at + 2:end]))
                i = end + 1
            elif name := _NAME.match(text, at + 1):
                out.append(self._value(name.group()) or "")
                i = name.end()
            else:
                raise self.error(f"invalid interpolation at {text[at:at + 10]!r}: write $$ for a literal $")
        out.append(text[i:])
        return "".join(out)

    def _closing(self, text: str, start: int) -> int:
        """The index of the `}` closing a `${` whose body begins at `start` (nested `${...}` skipped)."""
        depth = 1
        i = start
        while i < len(text):
            if text.startswith("${", i):
                depth, i = depth + 1, i + 2
                continue
            if text[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise self.error(f"invalid interpolation {text[start - 2:]!r}: no closing brace")

    def _value(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None and name not in self.unset:
            self.unset.append(name)
        return value

    def _braced(self, body: str) -> str:
        match = _BRACED.match(body)
        if not match:
            raise self.error(f"invalid interpolation ${{{body}}}: expected ${{NAME}}, ${{NAME:-default}} or "
                             f"${{NAME:?message}}")
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = self.env.get(name)
        if op is None:
            return self._value(name) or ""
        missing = value is None or (op.startswith(":") and value == "")
        kind = op[-1]
        if kind == "-":
            return self.substitute(arg) if missing else str(value)
        if kind == "?":
            if missing:
                message = self.substitute(arg) or "missing a value"
                raise self.error(f"required variable {name} is {'not set' if value is None else 'empty'}: {message}")
            return str(value)
        return "" if missing else self.substitute(arg)  # "+": the alternative when set


def interpolate(data: Any, env: Mapping[str, str], path: Path = ()) -> Interpolated:
    """`data` (parsed YAML) with `${...}` replaced in every string value, from `env`."""
    result = Interpolated(data)
    result.data = _walk(data, env, path, result)
    return result


def _walk(data: Any, env: Mapping[str, str], path: Path, result: Interpolated) -> Any:
    if isinstance(data, str):
        if "$" not in data:
            return data
        text = _Template(env, path, result.unset).substitute(data)
        if text != data:
            result.paths.add(path)
        return text
    if isinstance(data, dict):
        return {k: _walk(v, env, (*path, k), result) for k, v in data.items()}
    if isinstance(data, list):
        return [_walk(v, env, (*path, i), result) for i, v in enumerate(data)]
    return data


_INT = re.compile(r"^-?(?:0|[1-9]\d*)$")
_FLOAT = re.compile(r"^-?(?:0|[1-9]\d*)\.\d*[1-9]$")


def typed(text: str) -> Any:
    """The number or boolean an interpolated value spells exactly (it reads back as the same text), else the
    text: `port: ${PORT}` with PORT=8080 may fill an integer field, `"0123"` stays a string."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return {"true": True, "false": False}.get(text, text)
