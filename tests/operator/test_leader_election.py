"""Two real operator processes with `--leader-elect`: one acts, the other stands by (answering
its liveness probe) and takes over when the leader stops cleanly (at once: the Lease is
released) or dies (after one lease duration)."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import NAMESPACE, Harness, free_port, gpu_job, prepare_harness, start_operator

from lora_devkit.emulator import RestClient
from lora_devkit.operator_process import stop_operator
from lora_devkit.s3server import S3Server
from lora_operator.controller.leader import LEASES

LEASE = "lora-operator-test"
LEASE_SECONDS = 6


class Replicas:
    """Operator replicas by identity, each with its own log and liveness port."""

    def __init__(self, harness: Harness, workdir: Path) -> None:
        self.harness = harness
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, identity: str) -> None:
        self.ports[identity] = free_port()
        self.processes[identity] = start_operator(
            self.harness.kubeconfig,
            self.harness.config_path,
            self.log_path(identity),
            "--leader-elect",
            f"--leader-elect-name={LEASE}",
            f"--leader-elect-namespace={NAMESPACE}",
            f"--leader-elect-identity={identity}",
            f"--leader-elect-lease-seconds={LEASE_SECONDS}",
            f"--liveness=http://127.0.0.1:{self.ports[identity]}/healthz",
        )

    def log_path(self, identity: str) -> Path:
        return self.workdir / f"operator-{identity}.log"

    def log(self, identity: str) -> str:
        path = self.log_path(identity)
        return path.read_text(errors="replace") if path.exists() else ""

    def holder(self) -> str | None:
        lease = self.harness.client.get(LEASES, NAMESPACE, LEASE)
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    def wait_holder(self, identity: str, timeout: float) -> float:
        started = time.monotonic()
        self.harness.wait(
            f"{identity} to hold the lease", lambda: self.holder() == identity, timeout
        )
        return time.monotonic() - started

    def acted_on(self, job: str) -> set[str]:
        """The replicas that posted Events about `job` (the Event's reportingInstance)."""
        return {e.get("reportingInstance", "?") for e in self.harness.events(job)}

    def live(self, identity: str) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports[identity]}/healthz"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except OSError as exc:
            raise AssertionError(str(exc)) from exc

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                stop_operator(process)


@pytest.fixture
def replicas(cluster: tuple[RestClient, Path], s3: S3Server, tmp_path: Path) -> Iterator[Replicas]:
    client, kubeconfig = cluster
    if client.get(LEASES, NAMESPACE, LEASE) is not None:
        client.delete(LEASES, NAMESPACE, LEASE)
    harness = prepare_harness(client, s3, kubeconfig, tmp_path)
    group = Replicas(harness, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        harness.clean_up()


def test_only_the_leader_acts_and_a_standby_takes_over(replicas: Replicas) -> None:
    harness = replicas.harness
    replicas.start("a")
    replicas.wait_holder("a", timeout=60)
    replicas.start("b")
    harness.wait("b to stand by", lambda: "standing by" in replicas.log("b"), timeout=60)
    assert harness.wait("the standby's liveness endpoint", lambda: replicas.live("b"), 20)

    harness.apply(gpu_job("elect-one", 1))
    harness.wait_phase("elect-one", "Running", timeout=30)
    assert replicas.acted_on("elect-one") == {"a"}, "the standby reconciled a job"

    # A clean stop releases the Lease: b leads well before a lease duration has passed.
    assert replicas.processes["a"].poll() is None
    stop_operator(replicas.processes["a"])
    waited = replicas.wait_holder("b", timeout=LEASE_SECONDS)
    assert waited < LEASE_SECONDS, waited
    harness.apply(gpu_job("elect-two", 1))
    harness.wait_phase("elect-two", "Running", timeout=30)
    assert replicas.acted_on("elect-two") == {"b"}

    # A leader that dies holds the Lease until it expires; then the standby takes over.
    replicas.start("c")
    harness.wait("c to stand by", lambda: "standing by" in replicas.log("c"), timeout=60)
    replicas.processes["b"].send_signal(signal.SIGKILL)
    replicas.processes["b"].wait(10)
    killed = time.monotonic()
    replicas.wait_holder("c", timeout=LEASE_SECONDS * 3)
    assert time.monotonic() - killed >= LEASE_SECONDS * 0.8  # not before it expired
    harness.apply(gpu_job("elect-three", 1))
    harness.wait_phase("elect-three", "Running", timeout=30)
    assert replicas.acted_on("elect-three") == {"c"}
    assert replicas.processes["c"].poll() is None
