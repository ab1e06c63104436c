"""Fetch a model's config.json from a URL the platform allows, and nothing else.

spec.baseModel.config is written by job authors, and the operator's network position is not
theirs: a URL is fetched only when it falls under `policy.allowedModelConfigUrls` (compared as
parsed scheme, host, port and whole path segments, never as text, so `https://hub.example` does
not admit `https://hub.example.evil.net` or `https://hub.example@evil.net`), each redirect is
checked the same way, and the whole fetch has one deadline and one size cap. It is async: the
operator's event loop serves every other job meanwhile.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from ..api.operator_config import PlatformPolicy
from ..memory import PlanningError

FIELD = "spec.baseModel.config"
POLICY = "policy.allowedModelConfigUrls"
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024


Origin = tuple[str, str, int | None]  # scheme, host, port


def _origin(url: URL) -> Origin | None:
    """Scheme, host and port of a fetchable URL, or None: not http(s), no host, userinfo, or a
    host or port yarl cannot read."""
    if not _readable(url) or url.scheme not in ("http", "https"):
        return None
    if not url.host or url.user or url.password:
        return None
    return url.scheme, url.host, url.port


def _readable(url: URL) -> bool:
    """Whether yarl can read the URL's parts. It parses lazily, so reading `host` of
    `http://xn--a.com/` raises UnicodeError (bad IDNA, a ValueError): every helper here asks
    this first and so is total over junk."""
    try:
        url.host, url.port, url.user, url.password  # noqa: B018 (read for their errors)
    except (ValueError, TypeError):
        return False
    return True


def _parse(text: str) -> URL | None:
    """The URL, or None where yarl refuses it (an unclosed `[`, a port past 65535)."""
    try:
        url = URL(text)
    except (ValueError, TypeError):
        return None
    return url if _readable(url) else None


def allowed_entry(url: URL, allowed: list[str]) -> str | None:
    """The allow-list entry `url` falls under, or None (also for any malformed URL or entry)."""
    origin = _origin(url)
    if origin is None or ".." in url.path.split("/"):
        return None
    for entry in allowed:
        prefix = _parse(entry)
        if prefix is None or _origin(prefix) != origin:
            continue
        base = prefix.path
        if base in ("", "/") or url.path == base:
            return entry
        if url.path.startswith(base if base.endswith("/") else base + "/"):
            return entry
    return None


def check_allowed(url: str, policy: PlatformPolicy) -> URL:
    """The parsed URL if the policy allows it; else a PlanningError naming field and policy."""
    parsed = _parse(url)
    if parsed is None:
        raise PlanningError(
            f"{FIELD}: {url!r} is not a valid URL (its host is not a valid DNS or IDNA name, an "
            "IPv6 address lacks its closing ']', or its port is not a number in 0-65535)"
        )
    if not policy.allowed_model_config_urls:
        raise PlanningError(
            f"{FIELD}: this operator fetches no model config URLs ({POLICY} is empty); use a "
            "shipped model name or put the config.json in a ConfigMap and set "
            "spec.baseModel.configMapRef"
        )
    if allowed_entry(parsed, policy.allowed_model_config_urls) is None:
        raise PlanningError(
            f"{FIELD}: {url!r} is not under any of {POLICY} "
            f"({', '.join(policy.allowed_model_config_urls)}); use one of those, or a ConfigMap "
            "(spec.baseModel.configMapRef)"
        )
    return parsed


async def fetch_config_bytes(url: str, policy: PlatformPolicy) -> bytes:
    """The body at `url` (allowed, redirects re-checked), within the policy's deadline and cap."""
    current = check_allowed(url, policy)
    deadline = policy.model_config_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            async with aiohttp.ClientSession() as session:
                for _ in range(MAX_REDIRECTS + 1):
                    async with session.get(current, allow_redirects=False) as response:
                        if response.status in REDIRECTS:
                            current = _redirect_target(url, current, response, policy)
                            continue
                        if response.status != 200:
                            raise PlanningError(
                                f"{FIELD}: fetching {url!r} answered HTTP {response.status}"
                            )
                        return await _read_capped(url, response, policy.model_config_max_bytes)
                raise PlanningError(f"{FIELD}: {url!r} redirects more than {MAX_REDIRECTS} times")
    except PlanningError:
        raise
    except TimeoutError:
        raise PlanningError(
            f"{FIELD}: fetching {url!r} did not finish within {deadline:g} s "
            "(policy.modelConfigTimeoutSeconds)"
        ) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        reason = str(exc)[:200] or type(exc).__name__
        raise PlanningError(f"{FIELD}: cannot fetch {url!r} ({reason})") from None


def _redirect_target(
    url: str, current: URL, response: aiohttp.ClientResponse, policy: PlatformPolicy
) -> URL:
    location = response.headers.get("Location", "")
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError):
        target = None
    if not location or target is None:
        raise PlanningError(f"{FIELD}: {url!r} redirects without a usable Location")
    if allowed_entry(target, policy.allowed_model_config_urls) is None:
        raise PlanningError(
            f"{FIELD}: {url!r} redirects to {str(target)!r}, which {POLICY} does not allow"
        )
    return target


async def _read_capped(url: str, response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, refused as soon as it (or its announced length) passes `cap` bytes."""
    too_big = PlanningError(
        f"{FIELD}: {url!r} is larger than {cap} bytes (policy.modelConfigMaxBytes)"
    )
    if response.content_length is not None and response.content_length > cap:
        raise too_big
    body = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > cap:
            raise too_big
    return bytes(body)
