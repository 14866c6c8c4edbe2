"""The README's config reference table, generated from the schema in proxy/config/schema.py.

The table is derived, never hand-edited, so a field's default and description live only in its
`Field(...)`. tests/config/test_config_doc.py fails when README.md's table is stale.

    python -m proxy.config_doc                    # print the table
    python -m proxy.config_doc --write README.md  # replace the table between the markers
    python -m proxy.config_doc --check README.md  # exit 1 if the table differs
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.config.schema import ConfigSchema
from proxy.config.units import Unit, format_value

BEGIN = "<!-- config-reference:begin (generated: python -m proxy.config_doc --write README.md) -->"
END = "<!-- config-reference:end -->"
HEADER = "| key | default | meaning |\n|---|---|---|"


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _nested(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds and the path suffix to reach its fields (``, `[]`, `.<class>`), if any."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin in (Union, types.UnionType):  # `Model | None` only; other unions are one row
        members = [a for a in args if a is not type(None)]
        return _nested(members[0]) if len(members) == 1 else None
    if origin in (tuple, list) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<class>"
    return None


def _default(info: FieldInfo) -> str:
    extra = _extra(info)
    if "doc_default" in extra:
        return str(extra["doc_default"])
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None:
        return "none"
    unit = next((m.kind for m in info.metadata if isinstance(m, Unit)), None)
    return f"`{format_value(value, unit)}`"


def rows(model: type[BaseModel] = ConfigSchema, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(field path, default, description) for every documented field, depth first in schema order."""
    for name, info in model.model_fields.items():
        if _extra(info).get("doc_hidden"):
            continue
        path = f"{prefix}.{name}" if prefix else name
        nested = _nested(info.annotation)
        if info.description:
            yield path + (nested[1] if nested and nested[1] == "[]" else ""), _default(info), info.description
        elif nested is None:
            raise ValueError(f"{model.__name__}.{name} has no description")
        if nested is not None:
            yield from rows(nested[0], path + nested[1])


def render_table() -> str:
    """The markdown table, one row per field."""
    lines = [HEADER] + [f"| `{path}` | {default} | {text} |" for path, default, text in rows()]
    return "\n".join(lines) + "\n"


def replace_section(document: str, table: str) -> str:
    """`document` with the text between the markers replaced by `table`."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"markers not found: {BEGIN} ... {END}")
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.config_doc", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="replace the table between the markers in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's table is not the generated one")
    args = parser.parse_args(argv)
    table = render_table()
    if args.write is None and args.check is None:
        sys.stdout.write(table)
        return 0
    path = Path(args.write or args.check)
    current = path.read_text()
    wanted = replace_section(current, table)
    if args.check is not None:
        if wanted != current:
            print(f"{path}: config reference is stale; run python -m proxy.config_doc --write {path}",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
