"""Pod entry point (`python -m lora_trainer.launch`): wait for the rendezvous, start torchrun.

The operator sets MASTER_ADDR (pod 0's DNS name), MASTER_PORT, NNODES, NODE_RANK (or
JOB_COMPLETION_INDEX), NPROC_PER_NODE and POD_IP. Failed DNS lookups and hangs at start-up are
the most reported multi-node failures, so this waits, with retries and a clear timeout message,
until MASTER_ADDR resolves and (on non-zero ranks) the rendezvous port accepts connections.

torchrun uses torch elastic's c10d rendezvous, hosted by node 0's agent on MASTER_PORT: when a
non-zero node's pod dies, node 0's agent outlives its failed workers, restarts them (up to
LORAJOB_MAX_RESTARTS times) and waits for the Job's replacement pod to join; every worker then
resumes from the latest S3 checkpoint. With a static rendezvous the replacement could join a
store about to die and hang until the timeout. torchrun assigns global ranks itself, so nothing
below torchrun may treat NODE_RANK as a rank. LORAJOB_RENDEZVOUS=static restores the old path.

torchrun exits 1 whatever its workers returned, so each worker writes its exit code to a shared
folder and the launcher returns the most specific one (preempted, else bad config, else
transient). A bad config stops torchrun at once: restarting workers cannot fix it.

Preemption (lora_trainer.preemption): Kubernetes sends SIGTERM to this process (the container's
main process). torchrun's own handling would stop the workers after its shutdown timeout and,
with a signal sent to the whole group, a second SIGTERM would abort that shutdown; so torchrun
runs with SIGTERM ignored and without handling it, and this launcher writes the stop file the
workers read at each step end. They checkpoint at one agreed step and exit; the pod's grace
period (terminationGracePeriodSeconds, from the plan) bounds it all.
"""

from __future__ import annotations

import math
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

from lora_contract import pod
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_PREEMPTED, EXIT_TRANSIENT

from .errors import InvalidConfigError
from .preemption import STOP_FILE
from .settings import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_RENDEZVOUS_TIMEOUT_S,
    ENV_EXIT_CODE_DIR,
    TrainerSettings,
)

STORE_READ_TIMEOUT_S = 60  # a store read on a vanished host fails after this, not after 600 s
STOP_GRACE_S = 10.0
# torch 2.13 shares the agent's store with the workers and writes the workers' MASTER_ADDR/PORT
# into it only on a node's first rendezvous: after a restart, node 0 (rank 0 again) skips that
# write and a replacement node waits on those keys forever. Unshared, rank 0 writes them each
# round.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
# torchrun's default handles SIGTERM too; the launcher handles it instead (see the docstring).
TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


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


@dataclass(frozen=True)
class Rendezvous:
    """How torchrun's nodes find each other: backend, run id, own address, restart budget."""

    backend: str = "c10d"
    run_id: str = "lorajob"
    local_addr: str | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS
    timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S


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
    nnodes = _env_int(env, pod.ENV_NNODES, 1)
    rank_default = _env_int(env, pod.ENV_JOB_COMPLETION_INDEX, 0)
    topo = Topology(
        nnodes=nnodes,
        nproc_per_node=_env_int(env, pod.ENV_NPROC_PER_NODE, 0) or default_nproc(),
        node_rank=_env_int(env, pod.ENV_NODE_RANK, rank_default),
        master_addr=env.get(pod.ENV_MASTER_ADDR, "127.0.0.1"),
        master_port=_env_int(env, pod.ENV_MASTER_PORT, pod.DEFAULT_RENDEZVOUS_PORT),
    )
    if topo.nnodes < 1 or topo.nproc_per_node < 1:
        raise LaunchError("NNODES and NPROC_PER_NODE must be at least 1", EXIT_INVALID_CONFIG)
    if not 0 <= topo.node_rank < topo.nnodes:
        raise LaunchError(
            f"NODE_RANK {topo.node_rank} is outside 0..{topo.nnodes - 1} (NNODES={topo.nnodes})",
            EXIT_INVALID_CONFIG,
        )
    return topo


def rendezvous_from_env(env: dict[str, str], topo: Topology, timeout_s: float) -> Rendezvous:
    """LORAJOB_RENDEZVOUS (c10d|static), LORAJOB_RDZV_ID (default: MASTER_ADDR, unique per run
    and the same on every node), POD_IP (this node's address for the workers' store) and
    LORAJOB_MAX_RESTARTS (worker restarts after a lost peer before the pod fails)."""
    knobs = settings_from(env)
    return Rendezvous(
        backend=knobs.rendezvous,
        run_id=knobs.rendezvous_id or topo.master_addr,
        local_addr=env.get(pod.ENV_POD_IP, "") or None,
        max_restarts=knobs.max_restarts,
        timeout_s=timeout_s,
    )


def settings_from(env: dict[str, str]) -> TrainerSettings:
    """The trainer's knobs from `env`; a bad one is a LaunchError with exit code 3."""
    try:
        return TrainerSettings.from_env(env)
    except InvalidConfigError as exc:
        raise LaunchError(exc.message, EXIT_INVALID_CONFIG) from None


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


def _rendezvous_args(topo: Topology, rdzv: Rendezvous) -> list[str]:
    timeout = max(1, math.ceil(rdzv.timeout_s))
    if rdzv.backend == "static":
        return [
            f"--nnodes={topo.nnodes}",
            f"--node-rank={topo.node_rank}",
            f"--master-addr={topo.master_addr}",
            f"--master-port={topo.master_port}",
            "--max-restarts=0",  # Kubernetes (the Job's backoffLimit) restarts, from a checkpoint
            f"--rdzv-conf=timeout={timeout}",
        ]
    # Node 0 hosts the store explicitly: under the local executor every "node" is 127.0.0.1,
    # and torch's guess (does the endpoint name this machine?) would make all of them hosts.
    conf = [
        f"is_host={'true' if topo.node_rank == 0 else 'false'}",
        f"join_timeout={timeout}",
        f"read_timeout={min(timeout, STORE_READ_TIMEOUT_S)}",
    ]
    args = [
        f"--nnodes={topo.nnodes}:{topo.nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={topo.master_addr}:{topo.master_port}",
        f"--rdzv-id={rdzv.run_id}",
        f"--rdzv-conf={','.join(conf)}",
        f"--max-restarts={rdzv.max_restarts}",
    ]
    if rdzv.local_addr:
        args.append(f"--local-addr={rdzv.local_addr}")  # where peers reach this node's workers
    return args


def torchrun_command(topo: Topology, argv: list[str], rdzv: Rendezvous) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={topo.nproc_per_node}",
        f"--signals-to-handle={TORCHRUN_SIGNALS}",
        *_rendezvous_args(topo, rdzv),
        "-m",
        "lora_trainer.main",
        *argv,
    ]


def _worker_codes(folder: Path) -> set[int]:
    codes = set()
    for path in folder.glob("exit-*"):
        try:
            codes.add(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return codes


def worker_exit_code(folder: Path, torchrun_code: int) -> int:
    """The most specific exit code: preempted (preempted workers exit 0, so torchrun does not
    restart them, and end the group), else torchrun's success (workers that failed before a
    restart do not count), else bad config > transient."""
    codes = _worker_codes(folder)
    if EXIT_PREEMPTED in codes:
        return EXIT_PREEMPTED
    if torchrun_code == 0:
        return EXIT_OK
    if EXIT_INVALID_CONFIG in codes:
        return EXIT_INVALID_CONFIG
    return EXIT_TRANSIENT


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGINT torchrun (it stops its workers; it ignores SIGTERM), SIGKILL it if it does not
    exit in time."""
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def supervise(child: subprocess.Popen[bytes], folder: Path, poll_s: float = 0.5) -> int:
    """Wait for torchrun; stop it as soon as a worker reports a bad config, which torchrun's
    worker restarts would only repeat."""
    while True:
        try:
            code = child.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            if EXIT_INVALID_CONFIG in _worker_codes(folder):
                print(
                    "[lora-trainer] a worker reported a bad config: stopping torchrun",
                    file=sys.stderr,
                    flush=True,
                )
                _stop(child)
                return EXIT_INVALID_CONFIG
            continue
        return worker_exit_code(folder, code)


def run_torchrun(topo: Topology, argv: list[str], rdzv: Rendezvous) -> int:
    with tempfile.TemporaryDirectory(prefix="lorajob-exit-") as folder:
        env = {**os.environ, **TORCHRUN_ENV, ENV_EXIT_CODE_DIR: folder}
        stop_file = Path(folder) / STOP_FILE

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if not stop_file.exists():
                print(
                    "[lora-trainer] SIGTERM: asking every worker to checkpoint and stop",
                    file=sys.stderr,
                    flush=True,
                )
                stop_file.touch()

        signal.signal(signal.SIGTERM, request_stop)
        child = subprocess.Popen(
            torchrun_command(topo, argv, rdzv), env=env, preexec_fn=ignore_sigterm
        )
        return supervise(child, Path(folder))


def ignore_sigterm() -> None:
    """In torchrun's process before exec: an ignored signal stays ignored across exec (and
    into the workers, which install their own handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def rendezvous_timeout(env: dict[str, str]) -> float:
    """Seconds to wait for DNS, the port and torchrun's rendezvous (LORAJOB_RENDEZVOUS_TIMEOUT)."""
    return settings_from(env).rendezvous_timeout_s


def launch(argv: list[str], env: dict[str, str]) -> int:
    timeout_s = rendezvous_timeout(env)
    topo = topology_from_env(env)
    if topo.world_size == 1:
        from .main import main

        return main(argv)
    rdzv = rendezvous_from_env(env, topo, timeout_s)
    print(
        f"[lora-trainer] node {topo.node_rank}/{topo.nnodes}, {topo.nproc_per_node} processes, "
        f"{rdzv.backend} rendezvous {topo.master_addr}:{topo.master_port}",
        file=sys.stderr,
        flush=True,
    )
    wait_for_dns(topo.master_addr, timeout_s)
    if topo.node_rank != 0:
        wait_for_port(topo.master_addr, topo.master_port, timeout_s)
    return run_torchrun(topo, argv, rdzv)


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
