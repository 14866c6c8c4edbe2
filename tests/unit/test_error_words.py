"""aiohttp's own pages through `json_errors` (proxy/errors.py): one line that says what was refused."""

import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.errors import json_errors


async def reason_for(exc: web.HTTPException, method: str = "POST", path: str = "/x") -> tuple[str, web.Response]:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    resp = await json_errors(make_mocked_request(method, path), handler)
    assert isinstance(resp, web.Response) and resp.text is not None
    return json.loads(resp.text)["reason"], resp


async def test_a_405_names_the_method_the_path_and_the_allowed_ones_and_keeps_allow() -> None:
    reason, resp = await reason_for(web.HTTPMethodNotAllowed("POST", ["HEAD", "GET"]))
    assert reason == "method POST not allowed for /x; allowed: GET, HEAD" and resp.headers["Allow"] == "GET,HEAD"


async def test_pages_aiohttp_words_only_by_status_say_what_was_refused() -> None:
    assert (await reason_for(web.HTTPNotFound(), "GET"))[0] == "no route for /x"
    assert (await reason_for(web.HTTPBadRequest()))[0] == "bad request: POST /x"


async def test_a_page_worded_by_whoever_raised_it_keeps_its_words() -> None:
    assert (await reason_for(web.HTTPRequestEntityTooLarge(10, 20)))[0] == "Maximum request body size 10 exceeded."
    assert (await reason_for(web.HTTPNotFound(text="no route for host 'a'")))[0] == "no route for host 'a'"
