"""HTTP/2 streams no proxied route takes (the proxy's own endpoints `/health`, `/ready`, `/metrics`,
`/container-status`, `/info`, the waiting pages, and 404s) answered by the aiohttp application, as on HTTP/1.1.

Why an adapter and not the endpoints again: the application already holds every rule of them (which seed
routes `admin.on_proxy_port` lists, the JSON 404/405 bodies, the `_unmatched` metric): a `web.Request` is
built from the stream's head and run through the application's router and middlewares (`Application._handle`,
the call aiohttp's own server makes), and the returned `web.Response` is written as HTTP/2 frames. The own
endpoints are bodiless GETs answered whole, so no aiohttp writer is needed; a handler that streams (the waiting
page's event stream) is not served over HTTP/2: 505 with a JSON body saying so (use HTTP/1.1 for it).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.http.h2_to_h2 import SKIP

if TYPE_CHECKING:
    from proxy.http.h2server import ClientStream, H2ServerProtocol, Header


class _NoWire:
    """What a `web.Request` reads of its aiohttp connection; a stream has none (the answer is returned whole)."""

    ssl_context = peername = sockname = transport = None


class _Streams(ConnectionError):
    """A handler wanted to write its answer itself (a streamed response): not served over HTTP/2."""


class _NoWriter:
    """The request's payload writer: any use of it means the handler streams (see _Streams)."""

    def __getattr__(self, name: str) -> Any:
        raise _Streams(name)


async def serve_by_app(conn: H2ServerProtocol, stream: ClientStream, method: str, target: str, authority: str,
                       headers: CIMultiDictProxy[str]) -> tuple[int, int]:
    """(status, body bytes) of the application's answer to the stream."""
    fields = CIMultiDict(headers)
    if authority and "host" not in fields:
        fields["Host"] = authority
    message = RawRequestMessage(method, target, HttpVersion11, CIMultiDictProxy(fields), (), False, None, False, False,
                                URL(target, encoded=True))
    app = conn.fast.app
    task = asyncio.current_task()
    assert task is not None
    request = web.Request(message, EMPTY_PAYLOAD, cast(Any, _NoWire()), cast(Any, _NoWriter()), task, conn.loop,
                          client_max_size=app._client_max_size, scheme=conn.scheme, remote=conn.peer_host)
    response: web.StreamResponse | None
    try:
        response = await app._handle(request)
    except web.HTTPException as exc:  # a redirect, or a JSON one the middleware passes on
        response = exc
    except _Streams:
        response = None
    body = response.body if isinstance(response, web.Response) else None
    if response is None or not isinstance(body, (bytes, bytearray, type(None))):
        status = 505  # the version the request came in is the one thing wrong with it
        data = json.dumps({"status": status, "error": "http version not supported",
                           "reason": f"{target.partition('?')[0]} streams its answer: use HTTP/1.1 for it"}).encode()
        head: list[Header] = [(b":status", b"505"), (b"content-type", b"application/json; charset=utf-8")]
    else:
        data = bytes(body or b"")
        status = response.status
        head = [(b":status", str(status).encode())]
        head += [(n.lower().encode(), v.encode("latin-1")) for n, v in response.headers.items()
                 if n.lower().encode() not in SKIP and n.lower() != "content-length"]
    head.append((b"content-length", str(len(data)).encode()))
    if method == "HEAD" or not data:
        stream.send_headers(head, end=True)
        return status, 0
    stream.send_headers(head)
    await stream.send_data(data, end=True)
    return status, len(data)
