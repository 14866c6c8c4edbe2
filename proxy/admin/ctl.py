"""`python -m proxy ctl COMMAND [KEY] ...`: the admin API (proxy/admin/api.py) from a shell.

KEY is `class/key`, or a bare `key` when the proxy has one container class (or only one class has
used that key). The token comes from the environment (`$LAZY_PROXY_ADMIN_TOKEN`, or `--token-env`),
never from the command line, where `ps` would show it. `status` prints a table of every key (`-o json`: the admin
API's JSON, its pages joined, for scripts); every other answer is printed as JSON on stdout; `exec` writes the command's
output to stdout/stderr as it comes and exits with its exit code.

Exit codes: 0 done; 1 the operation failed (the runtime refused, a start failed); 2 usage; 3 no or
wrong token, or exec disabled; 4 unknown class or key; 5 the key's state does not allow it, or the
backend cannot; 6 the admin API cannot be reached; exec: the command's own code, 124 on its timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

OK, FAILED, USAGE, DENIED, NOT_FOUND, CONFLICT, UNREACHABLE, TIMED_OUT = 0, 1, 2, 3, 4, 5, 6, 124
EXIT_OF_STATUS = {400: USAGE, 401: DENIED, 403: DENIED, 404: NOT_FOUND, 409: CONFLICT}
DEFAULT_ADMIN = "http://127.0.0.1:8788"
TOKEN_ENV = "LAZY_PROXY_ADMIN_TOKEN"
HTTP_TIMEOUT = 600.0  # a start may wait for capacity and then start_timeout
DRAINING = ("stop", "pause", "destroy")
SIMPLE = ("start", "resume", "renew", "state")
KEY_HELP = {  # one line each in `ctl --help` (the admin API's own words: README, "Admin API and ctl")
    "start": "start the key's instance and wait until it is ready (creates the key)",
    "resume": "thaw a paused instance",
    "renew": "record activity now: the idle timer starts again",
    "state": "the key's state (as `status KEY`)",
    "stop": "stop the instance once the requests in flight end (--drain seconds at most)",
    "pause": "freeze the instance (docker/podman); the next request resumes it",
    "destroy": "stop and remove the container (no warm restart reuses it); forget its sleep-after",
}


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, base: str, token: str | None, token_env: str = TOKEN_ENV) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.token_env = token_env  # named in a 401 without a token: ctl's user never writes a header

    def open(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = HTTP_TIMEOUT) -> IO[bytes]:
        """The response; Failure (with the exit code its status means) for a refusal or no connection."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            hint = f"; set ${self.token_env} to the admin token" if exc.code == 401 and not self.token else ""
            raise Failure(EXIT_OF_STATUS.get(exc.code, FAILED), _refusal(exc) + hint) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Failure(UNREACHABLE, f"cannot reach the admin API at {self.base}: {reason}") from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self.open(method, path, body) as response:
            return json.loads(response.read())


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f"{exc.code} {body['error']}: {body['reason']}"
    except (ValueError, KeyError, TypeError):
        return f"{exc.code} {exc.reason}"


def listing(client: Client) -> dict[str, Any]:
    """Every key: the admin API's pages (`GET /admin/keys`, `next` after `next`) as one listing."""
    first = client.json("GET", "/admin/keys")
    keys, after = list(first["keys"]), first.get("next")
    while after is not None:
        page = client.json("GET", f"/admin/keys?cursor={urllib.parse.quote(str(after))}")
        keys += page["keys"]
        after = page.get("next")
    return {"backend": first["backend"], "classes": first["classes"], "keys": keys}


def _used(client: Client, class_name: str, key: str) -> bool:
    try:
        client.json("GET", f"/admin/keys/{class_name}/{key}")
    except Failure as failure:
        if failure.code == NOT_FOUND:
            return False
        raise
    return True


def resolve(client: Client, key: str) -> str:
    """`class/key` for the admin path."""
    if "/" in key:
        return key
    classes = client.json("GET", "/admin/keys?limit=1")["classes"]
    if len(classes) == 1:
        return f"{classes[0]}/{key}"
    used = [class_name for class_name in classes if _used(client, class_name, key)]
    if len(used) == 1:
        return f"{used[0]}/{key}"
    raise Failure(USAGE, f"key {key!r} is ambiguous: write CLASS/KEY (classes: {', '.join(classes)})")


def run_exec(client: Client, path: str, command: list[str], timeout: float | None) -> int:
    body: dict[str, Any] = {"command": command}
    if timeout is not None:
        body["timeout"] = timeout
    result: dict[str, Any] = {}
    with client.open("POST", path + "/exec", body, timeout=HTTP_TIMEOUT) as response:
        for raw in response:
            line = json.loads(raw)
            if "stream" in line:
                out = sys.stderr if line["stream"] == "stderr" else sys.stdout
                out.write(line["data"])
                out.flush()
            else:
                result = line
    if result.get("timed_out"):
        print(f"ctl: exec timed out after {result.get('seconds')}s", file=sys.stderr)
        return TIMED_OUT
    if result.get("error") or not isinstance(result.get("exit_code"), int):
        print(f"ctl: exec failed: {result.get('error', 'no exit code')}", file=sys.stderr)
        return FAILED
    return int(result["exit_code"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxy ctl", description="Operate keys through the admin API.")
    p.add_argument("--admin", default=os.environ.get("LAZY_PROXY_ADMIN", DEFAULT_ADMIN),
                   help=f"admin API base URL (default $LAZY_PROXY_ADMIN or {DEFAULT_ADMIN})")
    p.add_argument("--token-env", default=TOKEN_ENV, help=f"environment variable with the token ({TOKEN_ENV})")
    commands = p.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="every key, or one key's state")
    status.add_argument("key", nargs="?")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table (default) or json")
    for name in (*SIMPLE, *DRAINING):
        sub = commands.add_parser(name, help=KEY_HELP[name])
        sub.add_argument("key")
        if name in DRAINING:
            sub.add_argument("--drain", type=float, help="seconds requests in flight get to end")
        if name == "start":
            sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                             help="environment added to this start (repeatable; the key must be stopped)")
    sleep = commands.add_parser("sleep-after", help="per-key sleep_after (seconds, or `default`)")
    sleep.add_argument("key")
    sleep.add_argument("seconds")
    members = commands.add_parser("members", help="the cluster's live replicas, as this one sees them")
    members.add_argument("-o", "--output", choices=("table", "json"), default="table", help="table (default) or json")
    commands.add_parser("reload", help="read the config file again and apply it (or say why not)")
    rollout = commands.add_parser("rollout", help="rollouts of changed classes: status, pause, resume, undo")
    rollout.add_argument("action", choices=("status", "pause", "resume", "undo"))
    rollout.add_argument("container_class", nargs="?", help="the class (pause, resume, undo)")
    run = commands.add_parser("exec", help="run a command in the instance: ctl exec KEY [--timeout S] -- argv...")
    run.add_argument("key")
    run.add_argument("--timeout", type=float)
    return p


def dispatch(args: argparse.Namespace, client: Client) -> int:
    if args.command == "members":
        cluster = client.json("GET", "/info").get("cluster")
        if cluster is None:
            raise Failure(USAGE, "this proxy is not clustered (cluster.store: none)")
        print(json.dumps(cluster, indent=2) if args.output == "json" else members_table(cluster))
        return OK
    if args.command in ("reload", "rollout"):
        return deploy(args, client)
    if args.command == "status" and args.key is None:
        every = listing(client)
        print(json.dumps(every, indent=2) if args.output == "json" else table(every["keys"]))
        return OK
    path = "/admin/keys/" + resolve(client, args.key)
    if args.command == "exec":
        if not args.argv:
            raise Failure(USAGE, "nothing to run: ctl exec KEY -- command [args...]")
        return run_exec(client, path, args.argv, args.timeout)
    if args.command == "status":
        answer = client.json("GET", path)
        if args.output == "table":
            print(table([answer]))
            return OK
    elif args.command == "sleep-after":
        seconds = None if args.seconds == "default" else _number(args.seconds)
        answer = client.json("PUT", path + "/sleep_after", {"seconds": seconds})
    elif args.command == "start" and args.env:
        answer = client.json("POST", path + "/start", {"env": _env(args.env)})
    else:
        drain = getattr(args, "drain", None)
        answer = client.json("POST", f"{path}/{args.command}", {} if drain is None else {"drain": drain})
    print(json.dumps(answer, indent=2))
    return OK


def deploy(args: argparse.Namespace, client: Client) -> int:
    """`ctl reload`, `ctl rollout status|pause|resume|undo [CLASS]` (proxy/admin/deploy.py)."""
    if args.command == "reload":
        answer = client.json("POST", "/admin/config/reload", {})
    elif args.action == "status":
        answer = client.json("GET", "/admin/rollouts")
    elif not args.container_class:
        raise Failure(USAGE, f"ctl rollout {args.action} needs the container class")
    else:
        answer = client.json("POST", f"/admin/rollouts/{args.container_class}/{args.action}", {})
    print(json.dumps(answer, indent=2))
    return OK


COLUMNS = ("KEY", "CLASS", "STATE", "IN-FLIGHT", "IDLE", "STARTS")


def table(keys: list[dict[str, Any]], now: float | None = None) -> str:
    """`ctl status` for a person: one row per key, idle as a duration (`-`: never used)."""
    now = time.time() if now is None else now
    rows = [COLUMNS] + [(str(k["key"]), str(k["container"]), str(k["state"]), str(k["in_flight"]),
                         "-" if k.get("last_activity") is None else duration(now - float(k["last_activity"])),
                         str(k["start_count"])) for k in sorted(keys, key=lambda k: (k["container"], k["key"]))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def members_table(cluster: dict[str, Any]) -> str:
    """`ctl members` for a person: one row per live member (`*`: the replica asked), then its lease."""
    me = cluster["replica"]
    rows = [("MEMBER", "URL")] + [(("* " if m["id"] == me else "  ") + m["id"], m["url"])
                                  for m in cluster["members"]]
    width = max(len(row[0]) for row in rows)
    lease = (f"valid for {cluster['lease_valid_for']:g}s" if cluster["lease_valid"] else "NOT VALID")
    lines = [f"{a.ljust(width)}  {b}" for a, b in rows]
    lines.append(f"replica {me}: lease {lease} (ttl {cluster['lease_ttl']:g}s, epoch {cluster['epoch']}), "
                 f"{len(cluster['owned_keys'])} keys owned, {cluster['forwarded_requests']} requests forwarded, "
                 f"{cluster['store_errors']} etcd errors")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h10m`, `3d4h`: the two largest units."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _env(pairs: list[str]) -> dict[str, str]:
    """`--env NAME=VALUE` options as the start's env (the proxy checks the names)."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise Failure(USAGE, f"--env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Failure(USAGE, f"expected seconds or `default`, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if "--" in argv:  # what follows is exec's command, options and all
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    args = parser().parse_args(argv)
    args.argv = command
    client = Client(args.admin, os.environ.get(args.token_env) or None, args.token_env)
    try:
        return dispatch(args, client)
    except Failure as failure:
        print(f"ctl: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        return 130
