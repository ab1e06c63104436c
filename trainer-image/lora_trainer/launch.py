"""Pod entry point (`python -m lora_trainer.launch`): wait for the rendezvous, start torchrun.

The operator sets MASTER_ADDR (pod 0's DNS name), MASTER_PORT, NNODES, NODE_RANK (or
JOB_COMPLETION_INDEX), NPROC_PER_NODE. Failed DNS lookups and hangs at start-up are the most
reported multi-node failures, so this waits, with retries and a clear timeout message, until
MASTER_ADDR resolves and (on non-zero ranks) the rendezvous port accepts connections.

torchrun exits 1 whatever its workers returned, so each worker writes its exit code to a shared
folder and the launcher returns the most specific one (bad config beats transient).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from lora_operator.api.types import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_TRANSIENT

EXIT_CODE_DIR_ENV = "LORAJOB_EXIT_CODE_DIR"
DEFAULT_TIMEOUT_S = 600.0


class LaunchError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Topology:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _env_int(env: dict[str, str], name: str, default: int | None) -> int:
    value = env.get(name, "")
    if value == "":
        if default is None:
            raise LaunchError(f"env {name} is required", EXIT_INVALID_CONFIG)
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(
            f"env {name} must be an integer (got {value!r})", EXIT_INVALID_CONFIG
        ) from None


def default_nproc() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def topology_from_env(env: dict[str, str]) -> Topology:
    nnodes = _env_int(env, "NNODES", 1)
    rank_default = _env_int(env, "JOB_COMPLETION_INDEX", 0)
    topo = Topology(
        nnodes=nnodes,
        nproc_per_node=_env_int(env, "NPROC_PER_NODE", 0) or default_nproc(),
        node_rank=_env_int(env, "NODE_RANK", rank_default),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_env_int(env, "MASTER_PORT", 29500),
    )
    if topo.nnodes < 1 or topo.nproc_per_node < 1:
        raise LaunchError("NNODES and NPROC_PER_NODE must be at least 1", EXIT_INVALID_CONFIG)
    if not 0 <= topo.node_rank < topo.nnodes:
        raise LaunchError(
            f"NODE_RANK {topo.node_rank} is outside 0..{topo.nnodes - 1} (NNODES={topo.nnodes})",
            EXIT_INVALID_CONFIG,
        )
    return topo


def wait_for_dns(host: str, timeout_s: float, interval_s: float = 1.0) -> None:
    """Headless-Service names appear some seconds after the pod starts: retry until resolved."""
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror as exc:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"MASTER_ADDR {host!r} did not resolve within {timeout_s:.0f}s "
                    f"({attempts} attempts, last error: {exc.strerror}); check the headless "
                    "Service (publishNotReadyAddresses: true) and that pod 0 is scheduled",
                    EXIT_TRANSIENT,
                ) from None
        time.sleep(interval_s)


def wait_for_port(host: str, port: int, timeout_s: float, interval_s: float = 1.0) -> None:
    """Non-zero ranks: wait until node 0's rendezvous store listens."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"rendezvous {host}:{port} did not accept connections within "
                    f"{timeout_s:.0f}s (last error: {exc}); is pod 0 running?",
                    EXIT_TRANSIENT,
                ) from None
        time.sleep(interval_s)


def torchrun_command(topo: Topology, argv: list[str], timeout_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={topo.nnodes}",
        f"--nproc-per-node={topo.nproc_per_node}",
        f"--node-rank={topo.node_rank}",
        f"--master-addr={topo.master_addr}",
        f"--master-port={topo.master_port}",
        "--max-restarts=0",  # Kubernetes (the Job's backoffLimit) restarts, from a checkpoint
        f"--rdzv-conf=timeout={int(timeout_s)}",
        "-m",
        "lora_trainer.main",
        *argv,
    ]


def worker_exit_code(folder: Path, torchrun_code: int) -> int:
    """The most specific worker exit code: bad config > transient > torchrun's own."""
    codes = set()
    for path in folder.glob("exit-*"):
        try:
            codes.add(int(path.read_text().strip()))
        except ValueError:
            continue
    if torchrun_code == 0 and not codes:
        return EXIT_OK
    if EXIT_INVALID_CONFIG in codes:
        return EXIT_INVALID_CONFIG
    return EXIT_TRANSIENT


def run_torchrun(topo: Topology, argv: list[str], timeout_s: float) -> int:
    with tempfile.TemporaryDirectory(prefix="lorajob-exit-") as folder:
        env = {**os.environ, EXIT_CODE_DIR_ENV: folder}
        child = subprocess.Popen(torchrun_command(topo, argv, timeout_s), env=env)

        def forward(signum: int, frame: FrameType | None) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        code = child.wait()
        return worker_exit_code(Path(folder), code)


def rendezvous_timeout(env: dict[str, str]) -> float:
    """Seconds to wait for DNS, the port and torchrun's rendezvous (LORAJOB_RENDEZVOUS_TIMEOUT)."""
    value = env.get("LORAJOB_RENDEZVOUS_TIMEOUT", "")
    if value == "":
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if timeout <= 0:
        raise LaunchError(
            f"env LORAJOB_RENDEZVOUS_TIMEOUT must be a positive number of seconds (got {value!r})",
            EXIT_INVALID_CONFIG,
        )
    return timeout


def launch(argv: list[str], env: dict[str, str]) -> int:
    timeout_s = rendezvous_timeout(env)
    topo = topology_from_env(env)
    if topo.world_size == 1:
        from .main import main

        return main(argv)
    print(
        f"[lora-trainer] node {topo.node_rank}/{topo.nnodes}, {topo.nproc_per_node} processes, "
        f"rendezvous {topo.master_addr}:{topo.master_port}",
        file=sys.stderr,
        flush=True,
    )
    wait_for_dns(topo.master_addr, timeout_s)
    if topo.node_rank != 0:
        wait_for_port(topo.master_addr, topo.master_port, timeout_s)
    return run_torchrun(topo, argv, timeout_s)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        return launch(args, dict(os.environ))
    except LaunchError as exc:
        message = str(exc)
        print(f"lora-trainer launch: error: {message}", file=sys.stderr, flush=True)
        from .main import write_termination_message

        write_termination_message(message)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
