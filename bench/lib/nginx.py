"""Reference proxies for the benchmarks: nginx (and haproxy) in front of one HTTP upstream on 127.0.0.1.

    with nginx(upstream_port=8080, port=9000, workdir=Path(tmp), cpus="0"):   # a bench/lib/common.Server
        ...
    with nginx_front(8080, Path(tmp), listen="http2", locations=proxy_location(*FORWARDED)) as (port, pid):
        ...                                              # HTTP/2 (or TLS: listen="ssl", server=tls_lines(...))

Every nginx reverse-proxy config (the benchmarks', and the conformance tests' in tests/support/conformance.py) is
`nginx_conf`'s one frame; only the static upstream (`static_nginx`) has its own.

Each is configured the way one would run it in production as a keep-alive reverse proxy, not tuned for a
benchmark: one worker (nginx `worker_processes 1`, haproxy `nbthread 1`), a pool of keep-alive connections
to the upstream, X-Forwarded-* headers added (nginx: and X-Request-Id, as lazy-proxy sends it: both send the
instance the same headers), and **one log line per request written to a file** in
`workdir` (lazy-proxy logs every request by default, so turning the log off would not be a fair comparison).
The config is written to `workdir`, checked first (`nginx -t` / `haproxy -c`, whose message is raised on
error) and the server runs in the foreground in its own process group; stopping it (Server.stop) sends
SIGTERM to the group and waits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from bench.lib.common import Server, free_port, tool

# The frame every nginx reference here shares: one worker, everything (logs, temp dirs, pid) under `dir`, an
# `upstream` block of keep-alive connections to 127.0.0.1, one server on 127.0.0.1; callers add `http` lines
# (maps, buffering), the listen's options (`http2`, `ssl`), `server` lines (TLS, a second listen) and the
# locations. As root, workers would drop to `nobody` and could not use the 0700 temp dirs under `dir`: hence
# `user root`.
_FRAME = """\
{user}worker_processes 1;
error_log {dir}/error.log {error_level};
pid {dir}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
{http}
    upstream upstream_service {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port}{listen};
{server}{locations}
    }}
}}
"""

# What the reference proxies tell the instance about the client (a location's proxy_set_header lines replace the
# inherited ones, so each location sets them all).
FORWARDED = ("X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme")


def proxy_location(*headers: str, path: str = "/") -> str:
    """A location relaying to the `upstream_service` block over kept-alive HTTP/1.1, setting `headers`."""
    return "\n".join([f"        location {path} {{", "            proxy_pass http://upstream_service;",
                      "            proxy_http_version 1.1;", '            proxy_set_header Connection "";',
                      *(f"            proxy_set_header {header};" for header in headers), "        }"])


GRPC_LOCATION = """\
        location / {
            grpc_pass grpc://upstream_service;
        }"""

# The benchmark's set-up: a keep-alive reverse proxy adding X-Forwarded-* and the X-Request-Id lazy-proxy sends
# (the client's, else one made: the usual `map` recipe).
BENCH_HTTP = """\
    map $http_x_request_id $req_id { default $http_x_request_id; "" $request_id; }"""
BENCH_LOCATIONS = proxy_location("Host $http_host", *FORWARDED, "X-Forwarded-Host $http_host", "X-Request-Id $req_id")


def nginx_conf(workdir: Path, port: int, upstream_port: int, *, locations: str = BENCH_LOCATIONS,
               http: str = BENCH_HTTP, listen: str = "", server: str = "", keepalive: int = 32,
               connections: int = 1024, error_level: str = "warn") -> str:
    """An nginx.conf proxying 127.0.0.1:`port` to 127.0.0.1:`upstream_port` (the upstream block is
    `upstream_service`); `http` lines go into the http block, `listen` options (`http2`, `ssl`) onto the port's
    listen, `server` lines (each ending in a newline) and `locations` into the server block."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return _FRAME.format(user=user, dir=workdir, port=port, upstream_port=upstream_port, keepalive=keepalive,
                         connections=connections, error_level=error_level, http=http, locations=locations,
                         listen=f" {listen}" if listen else "", server=server)


def tls_lines(cert: Path, key: Path) -> str:
    """The server lines of a TLS listener (TLS 1.2 and 1.3) with this certificate."""
    return (f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n")


def nginx_binary() -> str | None:
    """`$NGINX`, else nginx on PATH or in /usr/sbin, or None."""
    env = os.environ.get("NGINX")
    return env if env and os.access(env, os.X_OK) else tool("nginx")


STATIC_CONF = """\
{user}worker_processes 1;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            default_type application/json;
            return 200 '{{"status":"ok"}}';
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4096
    log stdout format raw local0 info
defaults
    mode http
    log global
    option httplog
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream_service
backend upstream_service
    server upstream 127.0.0.1:{upstream_port}
"""


def _check(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"{what} config check failed: {(res.stderr or res.stdout).strip()}")


def _start(argv: list[str], ready_url: str, cpus: str | None, log: Path, error_log: Path | None = None) -> Server:
    """Server (whose error carries the tail of `log`) plus the tail of `error_log` if it does not come up."""
    try:
        return Server(argv, ready_url, cpus=cpus, log=str(log))
    except RuntimeError as exc:
        detail = error_log.read_text()[-2000:] if error_log and error_log.exists() else ""
        raise RuntimeError(f"{exc}\n{detail}".rstrip()) from exc


def _run_nginx(conf: str, workdir: Path, ready_url: str, cpus: str | None) -> Server:
    """Write `conf`, check it (`nginx -t`), and run nginx in the foreground until `ready_url` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    argv = [nginx_binary() or "/usr/sbin/nginx", "-p", str(workdir), "-c", str(path), "-g", "daemon off;"]
    _check([*argv, "-t", "-q"], "nginx")
    return _start(argv, ready_url, cpus, workdir / "stdout.log", workdir / "error.log")


def nginx(upstream_port: int, port: int, workdir: Path, *, cpus: str | None = None,
          ready_path: str = "/") -> Server:
    """nginx 1 worker, proxy_pass to an `upstream` block with `keepalive 32`, access log on (workdir/access.log)."""
    return _run_nginx(nginx_conf(workdir, port, upstream_port), workdir, f"http://127.0.0.1:{port}{ready_path}", cpus)


@contextlib.contextmanager
def nginx_front(upstream_port: int, workdir: Path, *, listen: str, locations: str, server: str = "",
                connections: int = 1024, cpus: str | None = None) -> Iterator[tuple[int, int]]:
    """nginx (one worker, access log on) whose port speaks `listen` (`http2`: h2c; `ssl` with `tls_lines`), up
    once a plain HTTP/1.1 probe port beside it answers /_probe; yields (port, pid) and stops it after."""
    port, probe = free_port(), free_port()
    conf = nginx_conf(workdir, port, upstream_port, http="", listen=listen, connections=connections,
                      server=f"        listen 127.0.0.1:{probe};\n{server}",
                      locations=f"        location = /_probe {{ return 200; }}\n{locations}")
    running = _run_nginx(conf, workdir, f"http://127.0.0.1:{probe}/_probe", cpus)
    try:
        yield port, running.pid
    finally:
        running.stop()


def static_nginx(port: int, workdir: Path, *, cpus: str | None = None) -> Server:
    """An upstream, not a proxy: nginx answering every path with a small JSON body (the cheapest keep-alive app)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "static.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(STATIC_CONF.format(user=user, dir=workdir, port=port))
    argv = [nginx_binary() or "/usr/sbin/nginx", "-p", str(workdir), "-c", str(conf),
            "-g", f"daemon off; pid {workdir}/nginx.pid;"]
    _check([*argv, "-t", "-q"], "nginx")
    return _start(argv, f"http://127.0.0.1:{port}/", cpus, workdir / "stdout.log", workdir / "error.log")


def haproxy(upstream_port: int, port: int, workdir: Path, *, cpus: str | None = None,
            ready_path: str = "/") -> Server:
    """haproxy 1 thread, `http-reuse always`, one httplog line per request on stdout (workdir/access.log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, upstream_port=upstream_port))
    binary = tool("haproxy") or "/usr/sbin/haproxy"
    _check([binary, "-c", "-q", "-f", str(conf)], "haproxy")
    return _start([binary, "-db", "-f", str(conf)], f"http://127.0.0.1:{port}{ready_path}", cpus,
                  workdir / "access.log")
