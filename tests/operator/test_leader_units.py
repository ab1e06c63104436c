"""Lease leader election against the emulated API server (real HTTP, real resourceVersions).

A fake monotonic clock drives expiry, so nothing here sleeps for a lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

from lora_devkit.emulator import EmulatedCluster
from lora_operator.controller.api_calls import api_call
from lora_operator.controller.elected import LOST_LEADERSHIP_EXIT, run_elected
from lora_operator.controller.kube import Kube, KubeError
from lora_operator.controller.leader import LEASE_CALLS, LEASES, LeaderElector, LeaseSettings

NAMESPACE = "lora-system"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmulatedCluster(tmp_path_factory.mktemp("k8s"), kserve=False) as emulated:
        yield emulated.url


@pytest.fixture
def lease_name(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("_", "-")[:60]


def elector(
    url: str, name: str, identity: str, clock: Clock, seconds: float = 15.0
) -> LeaderElector:
    settings = LeaseSettings(
        name=name, namespace=NAMESPACE, identity=identity, lease_seconds=seconds
    )
    return LeaderElector(Kube(kopf.ConnectionInfo(server=url)), settings, clock=clock)


@contextlib.asynccontextmanager
async def electors(
    url: str, name: str, *identities: str, clock: Clock, seconds: float = 15.0
) -> AsyncIterator[list[LeaderElector]]:
    """Candidates for one Lease; their HTTP sessions are closed afterwards."""
    group = [elector(url, name, identity, clock, seconds) for identity in identities]
    try:
        yield group
    finally:
        for member in group:
            await member.kube.close()


async def lease_spec(kube: Kube, name: str) -> dict[str, Any]:
    lease = await kube.get(LEASES, NAMESPACE, name)
    assert lease is not None
    return dict(lease["spec"])


def test_first_candidate_creates_the_lease_and_the_second_stands_by(
    api_url: str, lease_name: str
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with electors(api_url, lease_name, "a", "b", clock=clock) as (a, b):
            assert await a.try_acquire_or_renew()
            assert not await b.try_acquire_or_renew()
            assert b.holder == "a"
            spec = await lease_spec(a.kube, lease_name)
            assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
            assert spec["leaseTransitions"] == 0
            # the holder renews: renewTime moves, acquireTime stays
            clock.now += 5
            assert await a.try_acquire_or_renew()
            renewed = await lease_spec(a.kube, lease_name)
            assert renewed["acquireTime"] == spec["acquireTime"]
            assert renewed["renewTime"] >= spec["renewTime"]

    asyncio.run(scenario())


def test_takeover_only_after_a_whole_lease_duration_without_renewal(
    api_url: str, lease_name: str
) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with electors(api_url, lease_name, "a", "b", clock=clock) as (a, b):
            assert await a.try_acquire_or_renew()
            assert not await b.try_acquire_or_renew()  # b starts its own clock on the record
            clock.now += 14.9
            assert not await b.try_acquire_or_renew()
            clock.now += 0.2
            assert await b.try_acquire_or_renew()
            spec = await lease_spec(b.kube, lease_name)
            assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
            # a comes back: it sees b's fresh record and stands by
            assert not await a.try_acquire_or_renew() and a.holder == "b"

    asyncio.run(scenario())


def test_a_renewal_seen_by_the_standby_restarts_its_wait(api_url: str, lease_name: str) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with electors(api_url, lease_name, "a", "b", clock=clock) as (a, b):
            assert await a.try_acquire_or_renew()
            assert not await b.try_acquire_or_renew()
            clock.now += 10
            await asyncio.sleep(0.01)  # renewTime has microseconds: a new record
            assert await a.try_acquire_or_renew()
            assert not await b.try_acquire_or_renew()
            clock.now += 10  # 20 s since b first looked, but only 10 s since the renewal it saw
            assert not await b.try_acquire_or_renew()

    asyncio.run(scenario())


def test_a_stale_resource_version_is_refused(api_url: str, lease_name: str) -> None:
    async def scenario() -> None:
        async with electors(api_url, lease_name, "a", clock=Clock()) as (a,):
            assert await a.try_acquire_or_renew()
            lease = await a.kube.get(LEASES, NAMESPACE, lease_name)
            assert lease is not None
            stale = lease["metadata"]["resourceVersion"]
            assert await a.try_acquire_or_renew()  # a new resourceVersion
            with pytest.raises(KubeError) as refused:
                await a.kube.patch(
                    LEASES,
                    NAMESPACE,
                    lease_name,
                    {"metadata": {"resourceVersion": stale}, "spec": {"holderIdentity": "x"}},
                )
            assert refused.value.status == 409
            assert (await lease_spec(a.kube, lease_name))["holderIdentity"] == "a"

    asyncio.run(scenario())


def test_racing_candidates_for_an_expired_lease_elect_exactly_one(
    api_url: str, lease_name: str
) -> None:
    async def scenario() -> None:
        clock = Clock()
        names = ["old", *(f"c{i}" for i in range(5))]
        async with electors(api_url, lease_name, *names, clock=clock) as (old, *candidates):
            assert await old.try_acquire_or_renew()
            assert not any(await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates)))
            clock.now += 16
            won = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
            assert sum(won) == 1, won
            winner = candidates[won.index(True)].settings.identity
            assert (await lease_spec(old.kube, lease_name))["holderIdentity"] == winner

    asyncio.run(scenario())


def test_release_hands_over_at_once(api_url: str, lease_name: str) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with electors(api_url, lease_name, "a", "b", clock=clock) as (a, b):
            await a.acquire()
            assert not await b.try_acquire_or_renew()
            await a.release()
            assert await b.try_acquire_or_renew()  # no lease duration waited

    asyncio.run(scenario())


def test_hold_returns_when_the_lease_is_taken_over(api_url: str, lease_name: str) -> None:
    async def scenario() -> None:
        async with electors(api_url, lease_name, "a", clock=Clock(), seconds=1.5) as (a,):
            await a.acquire()
            holding = asyncio.ensure_future(a.hold())
            await asyncio.sleep(0.5)
            assert not holding.done()  # renewing
            intruder = {"spec": {"holderIdentity": "intruder"}}
            await a.kube.patch(LEASES, NAMESPACE, lease_name, intruder)
            await asyncio.wait_for(holding, timeout=5)
            assert not a.is_leader

    asyncio.run(scenario())


def test_hold_steps_down_when_the_api_server_is_unreachable(api_url: str, lease_name: str) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with electors(api_url, lease_name, "a", clock=clock, seconds=1.5) as (a,):
            await a.acquire()
            await a.kube.close()
            a.kube = Kube(kopf.ConnectionInfo(server="http://127.0.0.1:9"))  # nothing listens
            holding = asyncio.ensure_future(a.hold())
            for _ in range(50):
                await asyncio.sleep(0.05)
                clock.now += 0.1
                if holding.done():
                    break
            assert holding.done() and not a.is_leader
            assert clock.now - 1000.0 >= a.settings.renew_deadline

    asyncio.run(scenario())


def test_run_elected_stops_the_operator_and_exits_1_when_leadership_is_lost(
    api_url: str, lease_name: str
) -> None:
    async def scenario() -> int:
        a = elector(api_url, lease_name, "a", Clock(), seconds=1.5)
        seen: list[str] = []

        async def operator(stop: asyncio.Event) -> None:
            seen.append("started")
            intruder = Kube(kopf.ConnectionInfo(server=api_url))
            await intruder.patch(
                LEASES, NAMESPACE, lease_name, {"spec": {"holderIdentity": "intruder"}}
            )
            await intruder.close()
            await asyncio.wait_for(stop.wait(), timeout=5)
            seen.append("stopped")

        code = await run_elected(a, None, operator)
        assert seen == ["started", "stopped"]
        return code

    assert asyncio.run(scenario()) == LOST_LEADERSHIP_EXIT


def test_run_elected_releases_the_lease_when_the_operator_ends(
    api_url: str, lease_name: str, tmp_path: Path
) -> None:
    async def scenario() -> dict[str, Any]:
        a = elector(api_url, lease_name, "a", Clock())

        async def operator(stop: asyncio.Event) -> None:
            await asyncio.sleep(0.1)  # a clean exit, as after SIGTERM

        assert await run_elected(a, None, operator) == 0
        probe = Kube(kopf.ConnectionInfo(server=api_url))
        spec = await lease_spec(probe, lease_name)
        await probe.close()
        return spec

    spec = asyncio.run(scenario())
    assert not spec.get("holderIdentity")


def test_the_elector_calls_exactly_lease_calls(api_url: str, lease_name: str) -> None:
    """The chart's leader-election Role grants LEASE_CALLS: nothing the elector does is missing."""
    calls: set[tuple[str, str, str]] = set()

    class Recording(Kube):
        async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            calls.add(api_call(method, path))
            return await super().request(method, path, *args, **kwargs)

    async def scenario() -> None:
        clock = Clock()
        settings = LeaseSettings(name=lease_name, namespace=NAMESPACE, identity="a")
        a = LeaderElector(Recording(kopf.ConnectionInfo(server=api_url)), settings, clock=clock)
        await a.acquire()  # create
        assert await a.try_acquire_or_renew()  # get + patch
        await a.release()
        await a.kube.close()

    asyncio.run(scenario())
    assert calls == set(LEASE_CALLS)
