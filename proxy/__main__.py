"""`python -m proxy --config config.yaml [--host H] [--port P] [--admin-port A] [--log-level L] [--check]`
(`check` alone, as a word, is `--check`);
`python -m proxy ctl ...` (the admin API's command line, proxy/admin/ctl.py). Installed as `lazy-proxy` too.

Every mistake an operator makes is one line on stderr, never a traceback. Exit codes: 0 done; 1 an
unexpected error (its traceback only with `--log-level debug`), or `--check` found the backend
unreachable; 2 a config error: a bad field, a port in use (`server.port`, `admin.port`); 130 a second
SIGTERM/SIGINT while draining. SIGTERM/SIGINT stop accepting, drain in-flight requests for up to
server.drain_timeout, stop the instances this proxy started, and exit 0. SIGHUP reloads the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import select
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Coroutine


from proxy import __version__
from proxy.admin.api import create_admin_app
from proxy.app import PROXY, create_app
from proxy.banner import announce
from proxy.check import check
from proxy.compile import running
from proxy.config.schema import Config, ConfigError, load_config
from proxy.admin.ctl import main as ctl
from proxy.observe.logs import FORMATS, configure
from proxy.reload import reload
from proxy.http.server import serve

CONFIG_ERROR, UNEXPECTED = 2, 1
DEFAULT_CONFIGS = ("lazy-proxy.yaml", "config.yaml")  # without --config: the README's name, then the repo's


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazy-proxy", description="Lazy-start reverse proxy for containers.")
    p.add_argument("--config", help=f"the config file (default: {' or '.join(DEFAULT_CONFIGS)}, here)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--admin-port", type=int, help="admin listen port (overrides admin.port)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides logging.level")
    p.add_argument("--log-format", choices=FORMATS, help="overrides logging.format")
    p.add_argument("--check", action="store_true",
                   help="validate the config and probe the backend, without binding ports; exit 0, 1 or 2 "
                        "(also: lazy-proxy check --config ...)")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and the build, and exit")
    return p


class _Version(argparse.Action):
    """`--version`, the build asked only when it is shown (`running()` looks up every hot module)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"lazy-proxy {__version__} ({running()})")  # on stdout, as argparse's own version action
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    """The command; a reader that closed our stdout (`lazy-proxy check | head -1`) ends it quietly with exit 1,
    as Python's own recipe for SIGPIPE does (not SIGPIPE's default, which would also kill on a socket write)."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, not at exit, where a failed flush prints 'Exception ignored' and exits 120
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush goes nowhere
        return UNEXPECTED


def _stdout_closed() -> bool:
    """Whether the broken pipe is stdout's (its reader gone), not a socket's: only that one is quiet."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or stdout is no file
        return False


def _main(argv: list[str]) -> int:
    if argv[:1] == ["ctl"]:
        return ctl(argv[1:])
    if argv[:1] == ["check"]:  # `lazy-proxy check`, written like `ctl`, is `--check`
        argv = ["--check", *argv[1:]]
    args = parser().parse_args(argv)
    try:
        args.config = args.config or _default_config()
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    overrides = command_line(args)
    config = overrides(config)
    if args.check:
        return _run(check(config), config.log_level)
    configure(config.log_level, config.log_format)
    return _run(_serve(config, args.config, overrides), config.log_level)


def _default_config() -> str:
    """The first of DEFAULT_CONFIGS in the working directory."""
    for name in DEFAULT_CONFIGS:
        if Path(name).is_file():
            return name
    raise ConfigError("config", f"no --config given, and neither {' nor '.join(DEFAULT_CONFIGS)} is here")


def command_line(args: argparse.Namespace) -> Callable[[Config], Config]:
    """The command line's values over the file's, at start-up and at every reload (proxy/reload.py): a reload
    keeps `--port` and the like rather than naming them as needing a restart."""

    def apply(config: Config) -> Config:
        config = replace(config, host=args.host or config.host, port=config.port if args.port is None else args.port,
                         log_level=args.log_level or config.log_level,
                         log_format=args.log_format or config.log_format)
        if args.admin_port is not None:
            config = replace(config, admin=config.admin.model_copy(update={"port": args.admin_port}))
        return config
    return apply


def _run(main: Coroutine[Any, Any, int | None], level: str) -> int:
    """Run on uvloop (where there is one); every failure is one line on stderr and an exit code."""
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # platforms without uvloop run on asyncio's loop
        pass
    try:
        return run(main) or 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; the traceback at debug level
        if isinstance(exc, BrokenPipeError) and _stdout_closed():  # `check | head`: main ends it quietly
            raise
        if level == "debug":
            logging.getLogger("proxy").debug("unexpected error", exc_info=True)
        print(f"lazy-proxy: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return UNEXPECTED


async def _serve(config: Config, path: str, overrides: Callable[[Config], Config]) -> None:
    app = create_app(config)
    app[PROXY].config_path = Path(path)
    app[PROXY].overrides = overrides
    admin = None
    if config.admin.enabled:
        admin = (create_admin_app(app[PROXY]), config.admin.host, config.admin.port)

    async def started(listen: list[Any], admin_listen: list[Any]) -> None:
        await announce(app[PROXY], listen, admin_listen)
        # What start-up made (modules, config, app) lives as long as the process: out of the collector's full
        # passes, which otherwise walk it all and hold the event loop for tens of ms (issue 28).
        gc.freeze()
        # SIGHUP: read the config file again (proxy/reload.py); the outcome is a log line
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, app[PROXY])

    await serve(app, config.host, config.port, config.drain_timeout, admin, started,
                tls=config.tls, admin_tls=config.admin.tls)


if __name__ == "__main__":
    sys.exit(main())
