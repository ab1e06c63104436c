"""controller/model_config_fetch.py and model_config_source.py piece by piece (the
`model_config_fetch` mutation target): allow-list matching as parsed parts (entries that are
prefixes of other names), total over malformed URLs, redirects re-checked and counted, the size
cap at exactly its edge (announced or not, and a Content-Length that lies), the deadline; the
fetch cache's TTLs, its cap and its waiters; ConfigMap reads. Fetches go to a raw HTTP server on
loopback written here, so each response is exactly the bytes a test wants (no subprocess).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fake_kube import FakeKube
from yarl import URL

from lora_contract.types import BaseModelSpec
from lora_operator.api.operator_config import PlatformPolicy
from lora_operator.controller import model_config_source as source_module
from lora_operator.controller.model_config_fetch import (
    allowed_entry,
    check_allowed,
    fetch_config_bytes,
)
from lora_operator.controller.model_config_source import (
    FAILED_TTL_SECONDS,
    FETCHED_TTL_SECONDS,
    LOCAL_PATH_REFUSED,
    MAX_ENTRIES,
    Fetching,
    ModelConfigSource,
    read_config_map,
)
from lora_operator.memory import ModelConfig, PlanningError

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
        # `..%2f`: yarl keeps the segment `..` (an encoded slash), a server may climb with it
        ("https://cfg.example.com/models/..%2fadmin/x", [ENTRY], None),
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


def test_a_body_of_several_read_chunks_comes_back_whole() -> None:
    """200 000 bytes arrive in more than one 64 KiB read: all of them, in order."""
    body = bytes(range(256)) * 781 + b"end"
    assert len(body) == 199_939
    assert fetch({"/big": ok(body)}, "/big", model_config_max_bytes=200_000)[0] == body
    assert fetch({"/big": chunked(body)}, "/big", model_config_max_bytes=200_000)[0] == body


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


# ------------------------------------------------------------------ model_config_source: the cache

NS = "team-a"
CONFIG_BODY = b'{"model_type": "llama", "hidden_size": 64}'
CONFIG = {"model_type": "llama", "hidden_size": 64}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Woken:
    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []
        self.event = asyncio.Event()

    async def __call__(self, key: tuple[str, str]) -> None:
        self.keys.append(key)
        self.event.set()

    async def wait(self, count: int) -> None:
        while len(self.keys) < count:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 10)


def model(**fields: Any) -> BaseModelSpec:
    return BaseModelSpec.model_validate({"name": "my-org/custom", "source": "pvc://m/x", **fields})


def test_ttls_and_cap_are_as_documented() -> None:
    assert (FETCHED_TTL_SECONDS, FAILED_TTL_SECONDS, MAX_ENTRIES) == (600.0, 30.0, 256)


def test_a_fetched_config_is_reused_for_its_ttl_then_fetched_again() -> None:
    async def go() -> None:
        async with RawServer({"/c": ok(CONFIG_BODY)}) as server:
            clock, woken = Clock(), Woken()
            source = ModelConfigSource(on_ready=woken, clock=clock)
            url, rules, job = server.url("/c"), policy(server.url("/")), (NS, "a")
            assert await source.resolve(FakeKube(), job, model(config=url), rules) == Fetching(url)
            await woken.wait(1)
            fetched = ModelConfig(url, CONFIG)
            clock.now += FETCHED_TTL_SECONDS  # exactly the TTL: still fresh
            assert await source.resolve(FakeKube(), (NS, "b"), model(config=url), rules) == fetched
            assert server.asked == ["/c"] and woken.keys == [job]
            clock.now += 0.001
            assert await source.resolve(FakeKube(), job, model(config=url), rules) == Fetching(url)
            await woken.wait(2)
            assert server.asked == ["/c", "/c"]
            await source.close()

    asyncio.run(go())


def test_a_failed_fetch_is_kept_for_its_shorter_ttl() -> None:
    async def go() -> None:
        async with RawServer({}) as server:
            clock, woken = Clock(), Woken()
            source = ModelConfigSource(on_ready=woken, clock=clock)
            url, rules, job = server.url("/none"), policy(server.url("/")), (NS, "a")
            await source.resolve(FakeKube(), job, model(config=url), rules)
            await woken.wait(1)
            clock.now += FAILED_TTL_SECONDS
            with pytest.raises(PlanningError, match="answered HTTP 404"):
                await source.resolve(FakeKube(), job, model(config=url), rules)
            assert server.asked == ["/none"]
            clock.now += 0.001
            assert await source.resolve(FakeKube(), job, model(config=url), rules) == Fetching(url)
            await woken.wait(2)
            await source.close()

    asyncio.run(go())


def test_the_oldest_ended_fetch_is_forgotten_past_the_cap() -> None:
    async def go() -> None:
        async with RawServer({"/c": ok(CONFIG_BODY)}) as server:
            woken = Woken()
            source = ModelConfigSource(on_ready=woken, clock=Clock())
            rules = policy(server.url("/"))
            urls = [server.url(f"/c?{i}") for i in range(MAX_ENTRIES + 1)]
            server.routes.update({f"/c?{i}": ok(CONFIG_BODY) for i in range(len(urls))})
            for i, url in enumerate(urls):
                await source.resolve(FakeKube(), (NS, f"j{i}"), model(config=url), rules)
            await woken.wait(len(urls))
            # 257 ended: the next call forgets the oldest one, and only that one
            second = await source.resolve(FakeKube(), (NS, "x"), model(config=urls[1]), rules)
            assert second == ModelConfig(urls[1], CONFIG)
            first = await source.resolve(FakeKube(), (NS, "x"), model(config=urls[0]), rules)
            assert first == Fetching(urls[0])
            await source.close()

    asyncio.run(go())


def test_a_running_fetch_is_never_forgotten_and_close_cancels_it() -> None:
    async def go() -> None:
        async with RawServer({"/hang": headers_then_hang(**{"Content-Length": "100"})}) as server:
            woken = Woken()
            source = ModelConfigSource(on_ready=woken, clock=Clock())
            url, rules = server.url("/hang"), policy(server.url("/"))
            for name in ("a", "b"):
                assert await source.resolve(FakeKube(), (NS, name), model(config=url), rules) == (
                    Fetching(url)
                )
            for _ in range(100):  # the request is on its way
                if server.asked:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            assert server.asked == ["/hang"]  # one fetch for both jobs
            running = [fetch.task for fetch in source._fetches.values()]
            assert len(running) == 1 and not running[0].done()
            await source.close()
            assert running[0].cancelled()  # cancelled and awaited by close() itself
            assert woken.keys == []  # a cancelled fetch wakes nobody

    asyncio.run(go())


def test_the_waiters_are_woken_once_each_in_order() -> None:
    async def go() -> None:
        async with RawServer({"/c": ok(CONFIG_BODY)}) as server:
            woken = Woken()
            source = ModelConfigSource(on_ready=woken, clock=Clock())
            url, rules = server.url("/c"), policy(server.url("/"))
            for job in [(NS, "b"), (NS, "a"), (NS, "b")]:
                await source.resolve(FakeKube(), job, model(config=url), rules)
            await woken.wait(2)
            await asyncio.sleep(0.05)
            assert woken.keys == [(NS, "a"), (NS, "b")]
            assert source._background == set()  # the wake-up tasks are not kept once done
            await source.close()

    asyncio.run(go())


@pytest.mark.parametrize("ref", ["/etc/passwd", "config.json", "file:///etc/hosts", "HTTP://x/"])
def test_anything_but_an_http_url_is_a_local_path_refused_alike(ref: str) -> None:
    async def go() -> None:
        source = ModelConfigSource(on_ready=Woken())
        with pytest.raises(PlanningError) as exc:
            await source.resolve(FakeKube(), (NS, "a"), model(config=ref), policy(ENTRY))
        assert str(exc.value) == LOCAL_PATH_REFUSED

    asyncio.run(go())


def test_an_https_url_is_fetched_not_taken_for_a_path() -> None:
    async def go() -> None:
        source = ModelConfigSource(on_ready=Woken())
        url = f"{ENTRY}/llama/config.json"  # no such host: the fetch fails in the background
        assert await source.resolve(FakeKube(), (NS, "a"), model(config=url), policy(ENTRY)) == (
            Fetching(url)
        )
        await source.close()

    asyncio.run(go())


def test_a_fetched_body_that_is_not_json_names_the_url() -> None:
    async def go() -> str:
        async with RawServer({"/bad": ok(b"{nope")}) as server:
            woken = Woken()
            source = ModelConfigSource(on_ready=woken)
            url, rules = server.url("/bad"), policy(server.url("/"))
            await source.resolve(FakeKube(), (NS, "a"), model(config=url), rules)
            await woken.wait(1)
            with pytest.raises(PlanningError) as exc:
                await source.resolve(FakeKube(), (NS, "a"), model(config=url), rules)
            return str(exc.value).replace(str(server.port), "PORT")

    assert asyncio.run(go()) == (
        f"spec.baseModel.config: {URL_AT.format(path='/bad')} is not valid JSON "
        "(line 1: Expecting property name enclosed in double quotes)"
    )


def test_a_config_map_ref_is_read_in_the_jobs_own_namespace_under_the_policy_cap() -> None:
    kube = FakeKube()
    body = CONFIG_BODY + b" " * (CAP - len(CONFIG_BODY))
    kube.put(CONFIGMAPS, {"metadata": {"name": "cfg"}, "data": {"config.json": body.decode()}})
    kube.put(CONFIGMAPS, {"metadata": {"name": "junk"}, "data": {"k": "[1]"}})
    elsewhere = "/api/v1/namespaces/team-b/configmaps"
    kube.put(elsewhere, {"metadata": {"name": "theirs"}, "data": {"config.json": "{}"}})

    async def go(name: str, key: str, cap: int) -> Any:
        source = ModelConfigSource(on_ready=Woken())
        spec = model(configMapRef={"name": name, "key": key}, config=None)
        # the job's name is deliberately another namespace's: only job[0] may be used
        return await source.resolve(kube, (NS, "team-b"), spec, policy(model_config_max_bytes=cap))

    resolved = asyncio.run(go("cfg", "config.json", CAP))
    assert resolved == ModelConfig("ConfigMap team-a/cfg key config.json", CONFIG)
    with pytest.raises(PlanningError, match=r"larger than 1024 bytes"):
        asyncio.run(go_over(kube, body + b" "))  # one byte over the policy's cap
    with pytest.raises(PlanningError) as exc:
        asyncio.run(go("junk", "k", CAP))
    assert str(exc.value) == (
        "spec.baseModel.configMapRef: ConfigMap 'junk' key 'k' must hold a JSON object (a model "
        "config.json)"
    )
    with pytest.raises(PlanningError, match=r"ConfigMap 'theirs' not found in namespace 'team-a'"):
        asyncio.run(go("theirs", "config.json", CAP))


async def go_over(kube: FakeKube, body: bytes) -> Any:
    kube.put(CONFIGMAPS, {"metadata": {"name": "over"}, "data": {"config.json": body.decode()}})
    source = ModelConfigSource(on_ready=Woken())
    spec = model(configMapRef={"name": "over"})
    return await source.resolve(kube, (NS, "a"), spec, policy(model_config_max_bytes=CAP))


def test_a_shipped_model_is_used_when_no_config_is_given() -> None:
    async def go() -> Any:
        source = ModelConfigSource(on_ready=Woken())
        spec = model(name="meta-llama/Llama-3.2-1B")
        return await source.resolve(FakeKube(), (NS, "a"), spec, policy())

    resolved = asyncio.run(go())
    assert resolved.source == "shipped Llama-3.2-1B.json" or resolved.source.startswith("shipped ")
    assert resolved.data["model_type"] == "llama"


CONFIGMAPS = "/api/v1/namespaces/team-a/configmaps"


def read(kube: FakeKube, name: str, key: str = "config.json", cap: int = CAP) -> ModelConfig:
    ref = model(configMapRef={"name": name, "key": key}).config_map_ref
    assert ref is not None
    return asyncio.run(read_config_map(kube, NS, ref, cap))


def test_a_config_map_of_exactly_the_cap_is_read_one_byte_more_is_refused() -> None:
    exact = CONFIG_BODY + b" " * (CAP - len(CONFIG_BODY))
    kube = FakeKube()
    kube.put(CONFIGMAPS, {"metadata": {"name": "exact"}, "data": {"config.json": exact.decode()}})
    kube.put(
        CONFIGMAPS, {"metadata": {"name": "over"}, "data": {"config.json": exact.decode() + " "}}
    )
    assert read(kube, "exact") == ModelConfig("ConfigMap team-a/exact key config.json", CONFIG)
    with pytest.raises(PlanningError) as exc:
        read(kube, "over")
    assert str(exc.value) == (
        "spec.baseModel.configMapRef: ConfigMap 'over' key 'config.json' is larger than 1024 "
        "bytes (policy.modelConfigMaxBytes)"
    )


def test_config_map_keys_data_before_binary_and_every_refusal_named() -> None:
    kube = FakeKube()
    other = b'{"model_type": "mistral"}'
    kube.put(
        CONFIGMAPS,
        {
            "metadata": {"name": "both"},
            "data": {"config.json": CONFIG_BODY.decode()},
            "binaryData": {"config.json": base64.b64encode(other).decode(), "b.json": "!!"},
        },
    )
    assert read(kube, "both").data == CONFIG  # data wins over binaryData
    with pytest.raises(PlanningError) as exc:
        read(kube, "both", "b.json")
    assert str(exc.value) == (
        "spec.baseModel.configMapRef: ConfigMap 'both': binaryData key 'b.json' is not base64"
    )
    with pytest.raises(PlanningError) as exc:
        read(kube, "both", "c.json")
    assert str(exc.value) == (
        "spec.baseModel.configMapRef: ConfigMap 'both' has no key 'c.json' "
        "(keys: b.json, config.json)"
    )
    kube.put(CONFIGMAPS, {"metadata": {"name": "empty"}})
    with pytest.raises(PlanningError) as exc:
        read(kube, "empty")
    assert str(exc.value).endswith("has no key 'config.json' (keys: none)")
    with pytest.raises(PlanningError) as exc:
        read(kube, "absent")
    assert str(exc.value) == (
        "spec.baseModel.configMapRef: ConfigMap 'absent' not found in namespace 'team-a'"
    )
    assert source_module.CONFIGMAPS == "v1/configmaps"
