"""`admin`: the admin listener, kept apart from proxied traffic (part of proxy/config/schema.py's schema).

The proxy's own endpoints (status, config, metrics) and the control API live on their own listener, so
a client of the proxied port sees only the upstream; `on_proxy_port` keeps chosen seed endpoints there
too. The token is written in config or, better, read from an environment variable config names.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, model_validator

from proxy.config.base import Section, field_error, shown
from proxy.config.tls import TlsConfig
from proxy.config.units import Duration, NonEmptyStr, TupleOf

__all__ = ["Admin", "SEED_ROUTES", "SeedRoute"]

SeedRoute = Literal["health", "ready", "info", "container-status", "metrics"]
SEED_ROUTES: tuple[SeedRoute, ...] = ("health", "ready", "info", "container-status", "metrics")
LOOPBACK = ("127.", "::1", "localhost")
DAY = 86400.0
UpToADay = Annotated[Duration, Field(gt=0, le=DAY)]


class Admin(Section):
    enabled: bool = Field(default=True, description="serve the admin listener (`false`: none; no control API)")
    host: NonEmptyStr = Field(
        default="127.0.0.1", description="admin listen address; reads need no token only on a loopback address")
    port: int = Field(default=8788, ge=0, le=65535, description="admin listen port")
    on_proxy_port: TupleOf[SeedRoute] = Field(
        default=(), description="seed endpoints also served on the proxied port: `health`, `ready`, `info`, "
                                "`container-status`, `metrics` (each shadows the upstream's path)")
    token: str | None = Field(
        default=None, min_length=16, repr=False,
        description="bearer token for mutations and exec (at least 16 characters)",
        json_schema_extra=shown("none: mutations refused"))
    token_env: NonEmptyStr | None = Field(
        default=None, description="environment variable holding the token instead (must be set)",
        json_schema_extra=shown("none"))
    tls: TlsConfig | None = Field(
        default=None, description="terminate TLS on the admin listener (same fields as `server.tls`)",
        json_schema_extra=shown("none: plain HTTP"))
    exec: bool = Field(default=False, description="allow `POST /admin/keys/{class}/{key}/exec`")
    exec_timeout: UpToADay = Field(default=60.0, description="an exec's default and longest timeout (at most 1 day)")
    max_sleep_after: Annotated[Duration, Field(ge=1, le=30 * DAY)] = Field(
        default=6 * 3600.0, description="upper bound of a per-key `sleep_after` override "
                                                           "(1s to 30 days; the lower bound is 1s)")
    stop_drain: Duration = Field(
        default=30.0, description="how long an admin stop/pause/destroy waits for requests in flight by default")
    max_drain: UpToADay = Field(default=3600.0, description="longest `drain` an admin stop/pause/destroy may ask "
                                                             "for (at most 1 day)")

    @model_validator(mode="after")
    def _token_source(self) -> Admin:
        if self.stop_drain > self.max_drain:
            raise field_error(("stop_drain",), f"must be at most max_drain ({self.max_drain:g}s)")
        if self.token is not None and self.token_env is not None:
            raise field_error(("token_env",), "set either token or token_env, not both")
        if self.token_env is not None:
            value = os.environ.get(self.token_env, "")
            if len(value) < 16:
                raise field_error(("token_env",), f"environment variable {self.token_env} is "
                                                  f"{'not set' if not value else 'shorter than 16 characters'}")
        return self

    @property
    def secret(self) -> str | None:
        """The token, from config or the environment; None: mutations are refused."""
        if self.token_env is not None:
            return os.environ.get(self.token_env) or None
        return self.token

    @property
    def loopback(self) -> bool:
        return self.host.startswith(LOOPBACK)
