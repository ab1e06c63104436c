"""controller/model_config_fetch.py piece by piece (the `model_config_fetch` mutation target):
allow-list matching as parsed parts (entries that are prefixes of other names), total over
malformed URLs, redirects re-checked and counted, the size cap at exactly its edge (announced or
not, and a Content-Length that lies), the deadline. Fetches go to a raw HTTP server on loopback
written here, so each response is exactly the bytes a test wants (no subprocess, milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from yarl import URL

from lora_operator.api.operator_config import PlatformPolicy
from lora_operator.controller.model_config_fetch import (
    allowed_entry,
    check_allowed,
    fetch_config_bytes,
)
from lora_operator.memory import PlanningError

ENTRY = "https://cfg.example.com/models"
NOT_UNDER = (
    "spec.baseModel.config: {url!r} is not under any of policy.allowedModelConfigUrls "
    "({entries}); use one of those, or a ConfigMap (spec.baseModel.configMapRef)"
)
INVALID = (
    "spec.baseModel.config: {url!r} is not a valid URL (its host is not a valid DNS or IDNA "
    "name, an IPv6 address lacks its closing ']', or its port is not a number in 0-65535)"
)


# ------------------------------------------------------------------ the allow-list, no IO


@pytest.mark.parametrize(
    "url, entries, expected",
    [
        ("https://cfg.example.com/models/a/config.json", [ENTRY], ENTRY),
        ("https://cfg.example.com/models", [ENTRY], ENTRY),  # the entry itself
        ("https://cfg.example.com/models-evil/x", [ENTRY], None),  # a longer segment
        ("https://cfg.example.com.evil.io/models/x", [ENTRY], None),  # a longer host
        ("https://evil.io/models/x", [ENTRY], None),
        ("http://cfg.example.com/models/x", [ENTRY], None),  # another scheme
        ("https://cfg.example.com:8443/models/x", [ENTRY], None),  # another port
        ("https://cfg.example.com:443/models/x", [ENTRY], ENTRY),  # the default port, spelled
        ("https://cfg.example.com/models/../admin", [ENTRY], None),
        ("https://cfg.example.com/models/%2e%2e/admin", [ENTRY], None),  # encoded `..`
        ("https://cfg.example.com@evil.io/models/x", [ENTRY], None),  # userinfo trick
        ("https://u@cfg.example.com/models/x", [ENTRY], None),  # a user name
        ("https://:pw@cfg.example.com/models/x", [ENTRY], None),  # a password alone
        ("ftp://cfg.example.com/models/x", ["ftp://cfg.example.com/models"], None),
        ("https:///models/x", [ENTRY], None),  # no host
        ("http://xn--a.com/models/x", ["http://xn--a.com/models"], None),  # bad IDNA, both
        ("https://xn--/x", [ENTRY], None),
        # trailing slash in the entry: the same segment rule
        (
            "https://cfg.example.com/models/x",
            ["https://cfg.example.com/models/"],
            "https://cfg.example.com/models/",
        ),
        ("https://cfg.example.com/modelsx", ["https://cfg.example.com/models/"], None),
        # a whole host, with or without the slash
        (
            "https://cfg.example.com/any/thing",
            ["https://cfg.example.com"],
            "https://cfg.example.com",
        ),
        (
            "https://cfg.example.com/any/thing",
            ["https://cfg.example.com/"],
            "https://cfg.example.com/",
        ),
        # one exact file
        (
            "https://cfg.example.com/m/config.json",
            ["https://cfg.example.com/m/config.json"],
            "https://cfg.example.com/m/config.json",
        ),
        ("https://cfg.example.com/m/config.jsonx", ["https://cfg.example.com/m/config.json"], None),
        # malformed entries are skipped, not fatal; the first matching entry is named
        ("https://cfg.example.com/models/x", ["http://[::1", "https://xn--/", ENTRY], ENTRY),
        (
            "https://cfg.example.com/models/x",
            ["https://cfg.example.com/", ENTRY],
            "https://cfg.example.com/",
        ),
        ("https://cfg.example.com/models/x", [], None),
    ],
)
def test_allowed_entry(url: str, entries: list[str], expected: str | None) -> None:
    assert allowed_entry(URL(url), entries) == expected


def policy(*allowed: str, **fields: Any) -> PlatformPolicy:
    return PlatformPolicy(allowed_model_config_urls=list(allowed), **fields)


@pytest.mark.parametrize(
    "url",
    [
        "http://xn--a.com/config.json",  # bad IDNA: UnicodeError when the host was read
        "https://xn--/x",  # an empty IDNA label
        "http://[::1/x",  # `[` without `]`
        "https://cfg.example.com:99999/models/x",  # port out of range
        "https://cfg.example.com:abc/models/x",  # port not a number
    ],
)
def test_a_malformed_url_is_refused_naming_the_field(url: str) -> None:
    for rules in (policy(ENTRY), policy()):  # before the allow-list is even looked at
        with pytest.raises(PlanningError) as exc:
            check_allowed(url, rules)
        assert str(exc.value) == INVALID.format(url=url)


def test_a_url_outside_the_list_names_every_entry() -> None:
    url = "https://cfg.example.com/models-evil/x"
    entries = [ENTRY, "https://other.example/"]
    with pytest.raises(PlanningError) as exc:
        check_allowed(url, policy(*entries))
    assert str(exc.value) == NOT_UNDER.format(url=url, entries=", ".join(entries))


def test_an_empty_list_fetches_nothing() -> None:
    with pytest.raises(PlanningError) as exc:
        check_allowed(f"{ENTRY}/x", policy())
    assert str(exc.value) == (
        "spec.baseModel.config: this operator fetches no model config URLs "
        "(policy.allowedModelConfigUrls is empty); use a shipped model name or put the "
        "config.json in a ConfigMap and set spec.baseModel.configMapRef"
    )


def test_an_allowed_url_comes_back_parsed() -> None:
    assert check_allowed(f"{ENTRY}/a?x=1", policy(ENTRY)) == URL(f"{ENTRY}/a?x=1")


# ------------------------------------------------------------------ a raw HTTP server

Writer = asyncio.StreamWriter
Route = bytes | Callable[[Writer], Awaitable[None]]


def response(status: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ok(body: bytes) -> bytes:
    return response("200 OK", body, **{"Content-Length": str(len(body))})


def redirect(code: int, location: str | None) -> bytes:
    headers = {"Content-Length": "0"}
    if location is not None:
        headers["Location"] = location
    return response(f"{code} Moved", **headers)


def headers_then_hang(**headers: str) -> Callable[[Writer], Awaitable[None]]:
    async def send(writer: Writer) -> None:
        writer.write(response("200 OK", **headers))
        await writer.drain()
        await asyncio.sleep(3600)

    return send


class RawServer:
    """Answers each path with fixed bytes (or a coroutine that writes them), then closes."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.asked: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.asked.append(path)
            route = self.routes.get(path, response("404 Not Found", **{"Content-Length": "0"}))
            if isinstance(route, bytes):
                writer.write(route)
                await writer.drain()
            else:
                await route(writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def fetch(routes: dict[str, Route], path: str, **fields: Any) -> tuple[bytes | str, list[str]]:
    """The body fetched from `path` (allow-listed: the whole server), or the refusal's text."""

    async def go() -> tuple[bytes | str, list[str]]:
        async with RawServer(routes) as server:
            rules = policy(server.url("/"), **fields)
            try:
                return await fetch_config_bytes(server.url(path), rules), server.asked
            except PlanningError as exc:
                return str(exc).replace(str(server.port), "PORT"), server.asked

    return asyncio.run(go())


CAP = 1024  # the policy's smallest allowed cap
URL_AT = "'http://127.0.0.1:PORT{path}'"


def too_big(path: str) -> str:
    return (
        f"spec.baseModel.config: {URL_AT.format(path=path)} is larger than {CAP} bytes "
        "(policy.modelConfigMaxBytes)"
    )


def chunked(body: bytes) -> bytes:
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:500], body[500:]))
    return response("200 OK", framed + b"0\r\n\r\n", **{"Transfer-Encoding": "chunked"})


def close_delimited(body: bytes) -> bytes:
    return response("200 OK", body)  # no length at all: the body ends when the socket closes


@pytest.mark.parametrize("frame", [ok, chunked, close_delimited])
def test_a_body_of_exactly_the_cap_passes_one_byte_more_is_refused(
    frame: Callable[[bytes], bytes],
) -> None:
    exact, over = b"x" * CAP, b"x" * (CAP + 1)
    routes: dict[str, Route] = {"/exact": frame(exact), "/over": frame(over)}
    assert fetch(routes, "/exact", model_config_max_bytes=CAP)[0] == exact
    assert fetch(routes, "/over", model_config_max_bytes=CAP)[0] == too_big("/over")


def test_an_announced_length_over_the_cap_is_refused_before_any_body() -> None:
    """The server announces CAP + 1 and then sends nothing: refused at once, not at the
    deadline; an announced CAP exactly is read (and then hits the deadline)."""
    routes: dict[str, Route] = {
        "/over": headers_then_hang(**{"Content-Length": str(CAP + 1)}),
        "/exact": headers_then_hang(**{"Content-Length": str(CAP)}),
    }
    fields = {"model_config_max_bytes": CAP, "model_config_timeout_seconds": 0.5}
    assert fetch(routes, "/over", **fields)[0] == too_big("/over")
    assert "did not finish within 0.5 s" in str(fetch(routes, "/exact", **fields)[0])


def test_a_content_length_that_lies_low_is_refused_with_a_bounded_reason() -> None:
    """Content-Length 10 with 5000 bytes behind it: the client refuses the extra data, and the
    refusal quotes the client's reason cut to 200 characters (it echoes the bytes it saw)."""
    lie = response("200 OK", b"y" * 5000, **{"Content-Length": "10"})
    text = str(fetch({"/lie": lie}, "/lie", model_config_max_bytes=CAP)[0])
    prefix = f"spec.baseModel.config: cannot fetch {URL_AT.format(path='/lie')} ("
    assert text.startswith(prefix) and text.endswith(")")
    reason = text[len(prefix) : -1]
    assert len(reason) == 200 and "Data after `Connection: close`" in reason


def test_the_deadline_covers_a_trickling_body() -> None:
    async def trickle(writer: Writer) -> None:
        writer.write(response("200 OK", b"{", **{"Content-Length": "100"}))
        while True:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b" ")

    text, _ = fetch({"/slow": trickle}, "/slow", model_config_timeout_seconds=0.3)
    assert text == (
        f"spec.baseModel.config: fetching {URL_AT.format(path='/slow')} did not finish within "
        "0.3 s (policy.modelConfigTimeoutSeconds)"
    )


@pytest.mark.parametrize(
    "status", ["201 Created", "204 No Content", "304 Not Modified", "404 Nope"]
)
def test_only_200_is_a_body(status: str) -> None:
    text, _ = fetch({"/x": response(status, **{"Content-Length": "0"})}, "/x")
    code = status.split()[0]
    assert (
        text == f"spec.baseModel.config: fetching {URL_AT.format(path='/x')} answered HTTP {code}"
    )


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_every_redirect_code_is_followed_within_the_list(code: int) -> None:
    routes: dict[str, Route] = {"/from": redirect(code, "/to"), "/to": ok(b"{}")}
    assert fetch(routes, "/from") == (b"{}", ["/from", "/to"])


def hops(redirects: int) -> dict[str, Route]:
    routes: dict[str, Route] = {f"/hop{i}": redirect(302, f"/hop{i + 1}") for i in range(redirects)}
    routes[f"/hop{redirects}"] = ok(b"{}")
    return routes


def test_five_redirects_are_followed_six_are_refused() -> None:
    body, asked = fetch(hops(5), "/hop0")
    assert body == b"{}" and asked == [f"/hop{i}" for i in range(6)]
    text, asked = fetch(hops(6), "/hop0")
    assert text == (
        f"spec.baseModel.config: {URL_AT.format(path='/hop0')} redirects more than 5 times"
    )
    assert asked == [f"/hop{i}" for i in range(6)]  # the sixth target is never asked


@pytest.mark.parametrize(
    "location",
    [
        "http://evil.example/config.json",
        "http://127.0.0.1:1/config.json",  # same host, another port
        "http://xn--a.com/config.json",  # a bad IDNA host is refused, not a UnicodeError
        "file:///etc/passwd",
    ],
)
def test_a_redirect_leaving_the_list_is_refused_unfollowed(location: str) -> None:
    text, asked = fetch({"/r": redirect(302, location)}, "/r")
    assert text == (
        f"spec.baseModel.config: {URL_AT.format(path='/r')} redirects to {location!r}, which "
        "policy.allowedModelConfigUrls does not allow"
    )
    assert asked == ["/r"]


@pytest.mark.parametrize("location", [None, "", "http://[::1"])
def test_a_redirect_without_a_usable_location_is_refused(location: str | None) -> None:
    text, _ = fetch({"/r": redirect(302, location)}, "/r")
    assert text == (
        f"spec.baseModel.config: {URL_AT.format(path='/r')} redirects without a usable Location"
    )


def test_an_unreachable_server_is_a_refusal_naming_the_url() -> None:
    async def go() -> str:
        async with RawServer({}) as server:
            url = server.url("/config.json")
        # the server is closed: nothing listens on that port any more
        with pytest.raises(PlanningError) as exc:
            await fetch_config_bytes(url, policy(url))
        return str(exc.value)

    text = asyncio.run(go())
    assert text.startswith("spec.baseModel.config: cannot fetch 'http://127.0.0.1:")
    assert text.endswith(")") and len(text) < 400
