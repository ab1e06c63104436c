"""Run the operator only while this replica holds the leader Lease.

A standby keeps its liveness endpoint answering (so the kubelet does not restart it for waiting)
and exits cleanly on SIGTERM. The leader runs kopf; when it loses the Lease it stops kopf and the
process exits with 1, so its pod restarts as a standby. On SIGTERM the leader releases the Lease,
so a standby takes over within one retry period instead of one lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

import aiohttp.web

from .leader import LeaderElector
from .metrics import LEADER

log = logging.getLogger("lora_operator.elected")

LOST_LEADERSHIP_EXIT = 1


@contextlib.asynccontextmanager
async def standby_liveness(endpoint: str | None) -> AsyncIterator[None]:
    """Answer the liveness URL while standing by; kopf serves it once we lead."""
    if not endpoint:
        yield
        return
    url = urlparse(endpoint)

    async def alive(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"role": "standby"})

    app = aiohttp.web.Application()
    app.router.add_get(url.path or "/", alive)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 80)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _until_leader_or_signal(elector: LeaderElector) -> bool:
    """True once leader; False if SIGINT/SIGTERM came first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        acquire = asyncio.ensure_future(elector.acquire())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acquire, stopped):
            task.cancel()
        await asyncio.gather(acquire, stopped, return_exceptions=True)
        return elector.is_leader
    finally:
        for sig in signals:  # kopf installs its own once it runs
            loop.remove_signal_handler(sig)


async def run_elected(
    elector: LeaderElector,
    liveness_endpoint: str | None,
    run_operator: Callable[[asyncio.Event], Awaitable[None]],
) -> int:
    """Stand by, then lead: `run_operator(stop_flag)` runs kopf until `stop_flag` is set."""
    LEADER.set(0)
    async with standby_liveness(liveness_endpoint):
        leader = await _until_leader_or_signal(elector)
    if not leader:
        log.info("stopped while standing by")
        return 0
    LEADER.set(1)
    stop_flag = asyncio.Event()
    holding = asyncio.ensure_future(elector.hold())
    holding.add_done_callback(lambda _: stop_flag.set())
    try:
        await run_operator(stop_flag)
    finally:
        lost = holding.done() and not holding.cancelled()
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        LEADER.set(0)
        if not lost:
            await elector.release()
        await elector.kube.close()
    if lost:
        log.error("exiting after losing leadership; the restarted pod stands by")
        return LOST_LEADERSHIP_EXIT
    return 0
