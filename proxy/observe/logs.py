"""structlog set-up: one line per event on stderr, as JSON (to ship and grep) or for a person (console).

Libraries that log through the standard `logging` module (the backends, aiohttp, aiodocker) go
through the same renderer, so the stream never mixes formats. `logging.format` picks the renderer;
unset, a terminal gets the console format and anything else (a pipe, a file, a log shipper) JSON.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

FORMATS = ("console", "json")

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
]


def default_format(stream: TextIO | None = None) -> str:
    """`console` on a terminal, `json` otherwise (the one place this default is decided)."""
    stream = stream or sys.stderr
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def resolve_format(fmt: str | None) -> str:
    return fmt if fmt in FORMATS else default_format()


def _renderer(fmt: str) -> tuple[Processor, list[Processor]]:
    """The final renderer and the processors before it: a console line is `HH:MM:SS [level] event key=value`
    (colours only on a terminal), a JSON line keeps the ISO timestamp and a formatted traceback."""
    if fmt == "console":
        stamp = structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
        return structlog.dev.ConsoleRenderer(colors=default_format() == "console", pad_event_to=0,
                                             pad_level=False), [stamp]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    return structlog.processors.JSONRenderer(), [stamp, structlog.processors.format_exc_info]


def configure(level: str = "info", fmt: str | None = None) -> str:
    """Route structlog and stdlib logging to stderr at `level` in `fmt` (None: the default); the format used."""
    fmt = resolve_format(fmt)
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer, before = _renderer(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, *before[:1], structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *before[1:], renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[*_SHARED, *before, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return fmt
