"""`server.tls` and `admin.tls`: a listener that terminates TLS itself (part of proxy/config/schema.py's schema).

The files are read when the config loads, so a missing file, a file that is not a PEM certificate or a key
that is not the certificate's is a config error naming the field (`server.tls.key`), before anything
starts. Relative paths are relative to the config file's directory. proxy/wire/tls.py builds the context
and reloads a rotated certificate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from proxy.config.base import Section, field_error, shown
from proxy.config.units import NonEmptyStr
from proxy.wire.tls import TlsFileError, check_files

__all__ = ["TlsConfig"]


def _version(value: Any) -> Any:
    """`min_version: 1.2` is a YAML float: the version it spells."""
    return f"{value:g}" if isinstance(value, float) and not isinstance(value, bool) else value


class TlsConfig(Section):
    cert: NonEmptyStr = Field(description="PEM certificate chain (the leaf first); re-read when the file changes")
    key: NonEmptyStr = Field(description="PEM private key of `cert` (unencrypted); re-read with it")
    min_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(_version)] = Field(
        default="1.2", description="oldest TLS version accepted: `1.2` or `1.3`")
    client_ca: NonEmptyStr | None = Field(
        default=None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)",
        json_schema_extra=shown("none: no client certificate asked"))

    @field_validator("cert", "key", "client_ca")
    @classmethod
    def _absolute(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        context = info.context if isinstance(info.context, dict) else {}
        path = Path(value).expanduser()
        return os.path.normpath(path if path.is_absolute() else Path(context.get("base") or Path.cwd()) / path)

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        try:
            check_files(self)
        except TlsFileError as exc:
            raise field_error((exc.field,), exc.reason) from None
        return self
