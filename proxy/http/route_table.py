"""The proxied paths: one aiohttp resource per configured path, each serving a `RouteGroup` of its routes.

At start-up the paths are registered in config order (after the proxy's own endpoints). A live reload
(proxy/reload.py) cannot register a resource: aiohttp freezes its router once serving. Its *index* is not
frozen, though (`UrlDispatcher.index_resource`/`unindex_resource`, what `register_resource` itself calls),
so `update` builds a resource for a new path and re-indexes the served paths in the new config's order,
and unindexes a removed one: aiohttp then resolves exactly as after a restart with that config (longest
literal prefix first, config order within one prefix), and the fast path's routers (proxy/http/fastpath.py,
HTTP/2 too) are re-indexed the same way. The request path does no extra work: the routers are rebuilt once
per reload, not consulted per request.
"""

from __future__ import annotations

from typing import Iterable

from aiohttp import web
from aiohttp.web_urldispatcher import ROUTE_RE

from proxy.http.fastpath import FastRouter
from proxy.http.routes import RouteHandler
from proxy.wire.route_match import RouteGroup

Group = RouteGroup[RouteHandler]


class RouteTable:
    """Resources by path (each kept once made: a path removed and added again reuses its resource)."""

    def __init__(self) -> None:
        self.groups: dict[web.AbstractResource, Group] = {}  # every resource ever made (the fast path's map)
        self.by_path: dict[str, web.AbstractResource] = {}
        self.served: list[web.AbstractResource] = []  # indexed in aiohttp's router, in config order
        self.first: list[web.AbstractResource] = []  # own endpoints a reload added (the waiting pages')
        self.router: web.UrlDispatcher | None = None
        self.fast_routers: list[FastRouter] = []  # re-indexed with aiohttp's (one per server)

    def register(self, app: web.Application, handlers: Iterable[RouteHandler]) -> None:
        """Start-up: each configured path once, in config order; routes sharing a path share its resource."""
        self.router = app.router
        for path, routes in _by_path(handlers).items():
            group = RouteGroup(routes)  # the group serves even one route: a reload changes its routes in place
            resource = app.router.add_route("*", path, group.handle, expect_handler=group.expect).resource
            assert resource is not None
            self._adopt(path, resource, group, routes)
            self.served.append(resource)

    def serve_first(self, resources: list[web.Resource]) -> None:
        """Own endpoints a reload adds (the waiting pages'): indexed before the configured paths, as they are
        registered before them at start-up (a catch-all route does not take them); the next `update` tells the
        fast path."""
        assert self.router is not None
        for resource in self.served:
            self.router.unindex_resource(resource)
        for resource in [*resources, *self.served]:
            self.router.index_resource(resource)
        self.first += resources

    def update(self, handlers: Iterable[RouteHandler]) -> None:
        """A reload: the paths served become these routes' (no await: no request sees half of it). A group
        changes in place (the routers hold it); a request in flight keeps the handler it was given."""
        assert self.router is not None
        served = []
        for path, routes in _by_path(handlers).items():
            resource = self.by_path.get(path)
            if resource is None:
                group = RouteGroup(routes)
                resource = _resource(path)
                resource.add_route("*", group.handle, expect_handler=group.expect)
                resource.freeze()
                self._adopt(path, resource, group, routes)
            else:
                self.groups[resource].__init__(routes)  # type: ignore[misc]
                for handler in routes:
                    handler.bind(resource)
            served.append(resource)
        for resource in self.groups.keys() - set(served):
            self.groups[resource].__init__([])  # type: ignore[misc]  # a removed path: nothing keeps its routes
        if served != self.served:
            for resource in self.served:
                self.router.unindex_resource(resource)
            for resource in served:
                self.router.index_resource(resource)
            self.served = served
        order = [r for r in self.router.resources() if r not in self.groups] + self.first + served
        for router in self.fast_routers:
            router.reindex(order)  # also forgets its cached resolutions (a path may now match another route)

    def _adopt(self, path: str, resource: web.AbstractResource, group: Group, routes: list[RouteHandler]) -> None:
        for handler in routes:
            handler.bind(resource)
        self.groups[resource] = group
        self.by_path[path] = resource


def _by_path(handlers: Iterable[RouteHandler]) -> dict[str, list[RouteHandler]]:
    """Each path's routes, paths in the order they first appear (a restart's registration order)."""
    by_path: dict[str, list[RouteHandler]] = {}
    for handler in handlers:
        by_path.setdefault(handler.route.path, []).append(handler)
    return by_path


def _resource(path: str) -> web.Resource:
    """The resource `router.add_route("*", path, ...)` makes, without registering it (the router is frozen)."""
    resource: web.Resource
    if "{" in path or "}" in path or ROUTE_RE.search(path):
        resource = web.DynamicResource(path)
    else:
        resource = web.PlainResource(path)
    return resource
