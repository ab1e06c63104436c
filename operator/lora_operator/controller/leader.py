"""Leader election over a `coordination.k8s.io/v1` Lease, so replicas never both act.

Why not kopf peering: it is a pause switch, not an election. Operators of the same priority all
freeze ("Possibly conflicting operators"), so two identical replicas would serve nothing. This
follows the scheme Kubernetes' own controllers use: the holder renews the Lease every retry
period; a candidate takes it over once it has seen no renewal for a whole lease duration (on its
own clock, so clock skew between nodes does not matter); every write carries the
`resourceVersion` it read, so two candidates cannot both win. A leader that cannot renew before
its deadline stops acting and exits, and its pod restarts as a candidate.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .kube import Kube, KubeError

log = logging.getLogger("lora_operator.leader")

LEASES = "coordination.k8s.io/v1/leases"
# Every call the elector makes, on its one Lease in the operator's namespace (the chart's
# leader-election Role grants exactly these; tests/chart/test_rbac.py checks it).
LEASE_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "patch"),
    }
)
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    """The pod name (unique per replica) plus a random suffix, so a restarted container with the
    same pod name is a new candidate rather than a holder that missed its renewals."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str | None:
    """The operator's own namespace: `POD_NAMESPACE`, else the service account's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_seconds: float = 15.0

    @property
    def renew_deadline(self) -> float:
        """A leader that has not renewed for this long steps down, before anyone may take over."""
        return self.lease_seconds * 2 / 3

    @property
    def retry_period(self) -> float:
        return max(self.lease_seconds / 7.5, 0.2)


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, hold and release one Lease. `clock` is monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None  # the last holder seen, for logs
        self.is_leader = False

    def _path(self) -> tuple[str, str, str]:
        return LEASES, self.settings.namespace, self.settings.name

    def _spec(self, current: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(datetime.datetime.now(tz=datetime.UTC))
        spec: dict[str, Any] = {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(round(self.settings.lease_seconds), 1),
            "renewTime": now,
        }
        if current is None or current.get("holderIdentity") != self.settings.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int((current or {}).get("leaseTransitions") or 0) + (
                1 if current is not None else 0
            )
        return spec

    def _expired(self, spec: dict[str, Any]) -> bool:
        """Expired when nobody holds it, or when its record has not changed for a whole lease
        duration of our own clock (never by comparing its timestamps with ours)."""
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if not spec.get("holderIdentity"):
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_seconds)
        return now - self._observed_at >= duration

    async def try_acquire_or_renew(self) -> bool:
        """One round: True if we hold the Lease afterwards. Conflicts and API errors are a lost
        round, not an exception: the caller retries."""
        kind, namespace, name = self._path()
        try:
            lease = await self.kube.get(kind, namespace, name)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": self._spec(None),
                }
                _, created = await self.kube.create(kind, namespace, body)
                self.holder = self.settings.identity if created else None
                return created
            spec = lease.get("spec") or {}
            self.holder = spec.get("holderIdentity") or None
            mine = self.holder == self.settings.identity
            if not mine and not self._expired(spec):
                return False
            # The resourceVersion we read is a precondition: a concurrent writer gets a 409.
            version = lease["metadata"].get("resourceVersion")
            patch = {"metadata": {"resourceVersion": version}, "spec": self._spec(spec)}
            await self.kube.patch(kind, namespace, name, patch)
        except KubeError as exc:
            level = logging.DEBUG if exc.status == 409 else logging.WARNING
            log.log(level, "lease %s/%s: %s", namespace, name, exc)
            return False
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("lease %s/%s: API server unreachable: %s", namespace, name, exc)
            return False
        self.holder = self.settings.identity
        return True

    async def acquire(self) -> None:
        """Wait until we are the leader."""
        announced: str | None = None
        while not await self.try_acquire_or_renew():
            if self.holder != announced:
                log.info(
                    "standing by: lease %s/%s is held by %s",
                    self.settings.namespace,
                    self.settings.name,
                    self.holder,
                )
                announced = self.holder
            await asyncio.sleep(self.settings.retry_period)
        self.is_leader = True
        log.info(
            "became the leader (lease %s/%s, identity %s)",
            self.settings.namespace,
            self.settings.name,
            self.settings.identity,
        )

    async def hold(self) -> None:
        """Renew every retry period; return once leadership is lost (not renewed in time, or
        taken over)."""
        last_renewal = self.clock()
        while True:
            await asyncio.sleep(self.settings.retry_period)
            if await self.try_acquire_or_renew():
                last_renewal = self.clock()
                continue
            if self.holder not in (None, self.settings.identity):
                log.error("lost the lease to %s", self.holder)
                break
            if self.clock() - last_renewal >= self.settings.renew_deadline:
                log.error(
                    "could not renew the lease for %.1f s: stepping down",
                    self.clock() - last_renewal,
                )
                break
        self.is_leader = False

    async def release(self) -> None:
        """On a clean shutdown: hand the Lease over at once instead of letting it expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        kind, namespace, name = self._path()
        try:
            lease = await self.kube.get(kind, namespace, name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.settings.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
            }
            await self.kube.patch(kind, namespace, name, patch)
            log.info("released the lease %s/%s", namespace, name)
        except (KubeError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)
