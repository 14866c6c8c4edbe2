"""The container options written as compose writes them: `volumes`, `ports`, `user`, `labels`, `env_file`.

Field types of `containers.<class>` (proxy/config/containers.py). Paths in them (`./site:/srv`, `env_file: .env`)
are relative to the config file's directory, as compose takes them relative to the compose file's; the loader
passes that directory as the validation context (`{"base": Path}`), else the working directory is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, PlainValidator, ValidationInfo

from backends.base import Volume
from proxy.config.units import TupleOf

__all__ = ["EnvFile", "Label", "Port", "User", "VolumeEntry", "parse_env_file", "parse_volume"]

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PORT = re.compile(r"^(\d{1,5})(?:/(tcp|udp))?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*(.*))?$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
OWN_LABELS = "proxy."  # the prefix of the labels this proxy sets (backends/base.py)


def _base(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base") or Path.cwd())


def _host_path(source: str, base: Path) -> str:
    path = Path(source).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def parse_volume(value: Any, base: Path) -> Volume:
    """`name:/target`, `/abs:/target`, `./rel:/target`, each with an optional `:ro` or `:rw` (compose's short
    syntax). A source with a `/` or starting with `.` or `~` is a host path (a bind mount), else a volume name."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'SOURCE:TARGET[:ro|rw]', got {type(value).__name__}")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"expected 'SOURCE:TARGET[:ro|rw]' (a volume name or a host path, then a container "
                         f"path), got {value!r}")
    source, target, *mode = parts
    if mode and mode[0] not in ("ro", "rw"):
        raise ValueError(f"mode must be ro or rw, got {mode[0]!r}")
    if not target.startswith("/"):
        raise ValueError(f"the container path must be absolute, got {target!r}")
    if "/" in source or source.startswith((".", "~")):
        source = _host_path(source, base)
    elif not _VOLUME_NAME.match(source):
        raise ValueError(f"invalid volume name {source!r} (letters, digits, '_', '.', '-'; a host path starts "
                         f"with '/', './' or '~')")
    return Volume(source=source, target=target, read_only=mode == ["ro"])


def _volume(value: Any, info: ValidationInfo) -> Volume:
    return parse_volume(value, _base(info))


def _port(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = _PORT.match(text) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"expected a container port like 9090 or '9090/udp', got {value!r}")
    return f"{int(match.group(1))}/{match.group(2) or 'tcp'}"


def _user(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _USER.match(text):
        raise ValueError(f"expected 'uid[:gid]' or 'name[:group]', got {value!r}")
    return text


def _label(name: str) -> str:
    if not _LABEL.match(name):
        raise ValueError(f"invalid label name {name!r}")
    if name.startswith(OWN_LABELS):
        raise ValueError(f"label {name!r}: labels beginning with {OWN_LABELS!r} are the proxy's own")
    return name


def _unquote(raw: str, where: str) -> str:
    """A value as compose's env files write it: "double" (with \\n escapes), 'single' (literal), or bare (an
    inline ` #comment` dropped)."""
    if raw[:1] in ("'", '"'):
        quote, end = raw[0], _closing_quote(raw)
        rest = raw[end + 1:].strip() if end > 0 else ""
        if end < 0 or (rest and not rest.startswith("#")):
            raise ValueError(f"{where}: unbalanced {quote} quote")
        inner = raw[1:end]
        if quote == "'":
            return inner
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), inner)
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def _closing_quote(raw: str) -> int:
    """The index of the quote closing `raw[0]` (a backslash escapes the next character in "double"), or -1."""
    i = 1
    while i < len(raw):
        if raw[i] == "\\" and raw[0] == '"':
            i += 2
            continue
        if raw[i] == raw[0]:
            return i
        i += 1
    return -1


def parse_env_file(path: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE lines (compose's `env_file` format): blank lines and `#` comments skipped, an optional `export `,
    optional quotes; a bare `KEY` takes the proxy's own environment's value (and is skipped when that is unset)."""
    environ = dict(os.environ) if environ is None else environ
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        where = f"{path} line {number}"
        if not match:
            raise ValueError(f"{where}: expected KEY=VALUE")
        name, raw = match.group(1), match.group(2)
        if raw is None:
            if name in environ:
                out[name] = environ[name]
            continue
        out[name] = _unquote(raw.strip(), where)
    return out


def _env_files(value: Any, info: ValidationInfo) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """One path or a list: each read now (a missing file is a config error), as (path, its variables)."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) and p for p in paths):
        raise ValueError("expected a file path or a list of them")
    base = _base(info)
    return tuple((path, tuple(parse_env_file(Path(_host_path(path, base))).items())) for path in paths)


VolumeEntry = Annotated[Volume, PlainValidator(_volume)]
Port = Annotated[str, PlainValidator(_port)]
User = Annotated[str, PlainValidator(_user)]
Label = Annotated[str, AfterValidator(_label)]
EnvFile = Annotated[tuple[tuple[str, tuple[tuple[str, str], ...]], ...], PlainValidator(_env_files)]
Volumes = TupleOf[VolumeEntry]
