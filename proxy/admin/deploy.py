"""The admin API's deploy endpoints: `POST /admin/config/reload` and the rollouts' `GET /admin/rollouts`,
`POST /admin/rollouts/{class}/pause|resume|undo` (what `ctl reload` and `ctl rollout ...` call).

A reload that the file's validation refuses answers 422 with the field named and changes nothing; an applied
one answers 200 with what changed and what needs a restart (proxy/reload.py). Both are mutations: the token,
one audit line and an `admin` hook event each.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

from proxy.app import PROXY
from proxy.errors import NotFound
from proxy.reload import reload

log = structlog.get_logger("proxy.admin")
ROLLOUT_ACTIONS = ("pause", "resume", "undo")
Authorize = Callable[[web.Request, bool], str]


def _audit(request: web.Request, who: str, action: str, outcome: str, **detail: Any) -> None:
    log.info("admin", who=who, action=action, outcome=outcome, **detail)
    request.app[PROXY].hooks.emit({"event": "admin", "who": who, "action": action, "container": detail.get(
        "container", ""), "key": "", "outcome": outcome, "timestamp": time.time(), **detail})


def routes(app: web.Application, authorize: Authorize) -> None:
    async def do_reload(request: web.Request) -> web.Response:
        who = authorize(request, True)
        outcome = reload(request.app[PROXY])
        body = outcome.body()
        _audit(request, who, "reload", "ok" if outcome.applied else "invalid_config",
               **({"reason": outcome.error} if outcome.error else {}))
        if not outcome.applied:
            return web.json_response({"error": "invalid config", "reason": outcome.error, "status": 422, **body},
                                     status=422)
        return web.json_response(body)

    async def rollouts(request: web.Request) -> web.Response:
        authorize(request, False)
        return web.json_response({"rollouts": request.app[PROXY].rollouts.status()})

    def action(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def act(request: web.Request) -> web.Response:
            who = authorize(request, True)
            class_name = request.match_info["class"]
            planner = request.app[PROXY].rollouts
            try:
                rollout = getattr(planner, name)(class_name)
            except KeyError:
                raise NotFound(f"no rollout of class {class_name!r}") from None
            _audit(request, who, f"rollout_{name}", "ok", container=class_name)
            return web.json_response(rollout.status())
        return act

    app.router.add_post("/admin/config/reload", do_reload)
    app.router.add_get("/admin/rollouts", rollouts)
    for name in ROLLOUT_ACTIONS:
        app.router.add_post(f"/admin/rollouts/{{class}}/{name}", action(name))
