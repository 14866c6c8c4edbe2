"""Host patterns, key templates (path/host variables, headers, cookies), User-Agent ignoring, path checks and the
host pick among routes of one path: the rules both data paths share (proxy/wire/route_match.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.wire.route_match import (HostPattern, KeyTemplate, RouteGroup, agent_matcher, check_path, cookie,
                               normalize_host, path_signature)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("raw, host", [
    ("Foo.Apps.Example.com:8787", "foo.apps.example.com"),
    ("example.com.", "example.com"),
    ("[::1]:8080", "[::1]"),
    ("127.0.0.1:80", "127.0.0.1"),
    (None, ""),
    ("", ""),
])
def test_the_host_header_is_compared_without_port_case_or_trailing_dot(raw, host):
    assert normalize_host(raw) == host


def test_a_host_variable_is_one_label():
    pattern = HostPattern("{id}.apps.example.com")
    assert pattern.variables == ["id"]
    assert pattern.match("abc.apps.example.com") == {"id": "abc"}
    assert pattern.match("a.b.apps.example.com") is None
    assert pattern.match("apps.example.com") is None
    assert pattern.match("abc.apps.example.org") is None


def test_literal_and_wildcard_hosts():
    assert HostPattern("API.example.com").match("api.example.com") == {}
    assert HostPattern("api.example.com").match("www.example.com") is None
    wildcard = HostPattern("*.example.com")
    assert wildcard.match("a.example.com") == {} and wildcard.match("a.b.example.com") == {}
    assert wildcard.match("example.com") is None and wildcard.match("a.example.org") is None


@pytest.mark.parametrize("bad", ["", "a..b", "api.*.com", "{1x}.example.com", "{id}.{id}.example.com",
                                 "exa mple.com", "{id.example.com", "x/y.example.com"])
def test_bad_host_patterns_are_refused(bad):
    with pytest.raises(ValueError):
        HostPattern(bad)


def test_key_templates_mix_literals_variables_headers_and_cookies():
    template = KeyTemplate("t-{header:X-Tenant}-{id}-{cookie:session}")
    got = template.fill({"id": "7"}, headers(("x-tenant", "acme"), ("Cookie", "a=1; session=s42")))
    assert got == "t-acme-7-s42"
    assert template.variables == ["id"]
    assert template.from_request == [("header", "X-Tenant"), ("cookie", "session")]
    assert KeyTemplate("{id}").fill({"id": "abc"}) == "abc"
    assert KeyTemplate("fixed").fill({}) == "fixed"


def test_a_missing_header_or_cookie_names_itself():
    template = KeyTemplate("{header:X-Tenant}-{cookie:session}")
    assert template.missing(headers()) == "missing header X-Tenant for the key"
    assert template.missing(headers(("X-Tenant", ""))) == "missing header X-Tenant for the key"
    assert template.missing(headers(("X-Tenant", "a"))) == "missing cookie session for the key"
    assert template.missing(headers(("X-Tenant", "a"), ("Cookie", "session=b"))) is None
    assert template.fill({}, headers(("X-Tenant", "a"))) == ""  # an invalid key; the reason is `missing`
    assert KeyTemplate("t-{header:X-Tenant}").fill({}, headers()) == ""  # never `t-`, a valid key


@pytest.mark.parametrize("bad", ["{header:}", "{header:X Y}", "{1x}", "a{b", "a}b", "{cookie:a;b}"])
def test_bad_key_templates_are_refused(bad):
    with pytest.raises(ValueError):
        KeyTemplate(bad)


def test_cookies_are_read_as_browsers_send_them():
    sent = headers(("Cookie", "theme=dark;session=abc ; other=x"), ("Cookie", 'late="q1"'))
    assert cookie(sent, "session") == "abc"
    assert cookie(sent, "late") == "q1"  # a second Cookie header and a quoted value
    assert cookie(sent, "sess") is None and cookie(headers(), "session") is None
    assert cookie(headers(("Cookie", "session")), "session") is None  # a bare name has no value


def test_ignored_user_agents_are_searched():
    matcher = agent_matcher(["kube-probe/", "(?i)bot"])
    assert matcher is not None
    assert matcher.search("kube-probe/1.29") and matcher.search("Mozilla/5.0 (compatible; Googlebot/2.1)")
    assert not matcher.search("Mozilla/5.0 Firefox/120")
    assert agent_matcher([]) is None


@pytest.mark.parametrize("path, reason", [
    ("/a/{id", "unbalanced"),
    ("/a/id}", "unbalanced"),
    ("/a/{tail:[}", "bad regular expression in a variable: unterminated character set"),
    ("/a/{id}/{id}", "variable {id} is used twice"),
])
def test_malformed_paths_are_explained(path, reason):
    problem = check_path(path)
    assert problem is not None and reason in problem


def test_good_paths_pass_and_signatures_ignore_variable_names():
    assert check_path("/container/{id}/api/{tail:.*}") is None
    assert path_signature("/a/{id}/{tail:.*}") == path_signature("/a/{x}/{rest:.*}") == "/a/{}/{:.*}"
    assert path_signature("/a/{id}") != path_signature("/a/{id:\\d+}")


@dataclass
class Handler:
    name: str
    host: HostPattern | None

    async def handle(self, request):  # pragma: no cover - RouteGroup's aiohttp side, tested through the proxy
        raise NotImplementedError

    async def expect(self, request):  # pragma: no cover
        raise NotImplementedError


def test_host_routes_first_in_config_order_then_the_hostless_route():
    tenant = Handler("tenant", HostPattern("{id}.apps.example.com"))
    admin = Handler("admin", HostPattern("admin.apps.example.com"))  # after tenant: never picked for that host
    any_host = Handler("any", None)
    group = RouteGroup([tenant, admin, any_host])
    assert group.only is None
    assert group.pick("ACME.apps.example.com:443") == (tenant, {"id": "acme"})
    assert group.pick("admin.apps.example.com") == (tenant, {"id": "admin"})
    assert group.pick("other.example.com") == (any_host, {})
    assert group.pick(None) == (any_host, {})
    assert RouteGroup([tenant]).pick("x.example.org") is None
    plain = RouteGroup([any_host])
    assert plain.only is any_host and plain.pick("whatever") == (any_host, {})
