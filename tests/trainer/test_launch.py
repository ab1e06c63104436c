"""The multi-node path through the real launcher: two `python -m lora_trainer.launch` processes
(NNODES=2, NODE_RANK 0/1, MASTER_ADDR=127.0.0.1) rendezvous over gloo, as the operator's pods do,
through torch elastic's c10d rendezvous hosted by node 0."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT
from lora_contract.storage import S3Store
from lora_contract.types import Progress
from lora_devkit.s3server import free_port
from lora_trainer.launch import (
    LaunchError,
    Rendezvous,
    Topology,
    rendezvous_from_env,
    rendezvous_timeout,
    supervise,
    topology_from_env,
    torchrun_command,
    wait_for_dns,
    wait_for_port,
    worker_exit_code,
)

from .conftest import finish_all, rendezvous_port


def node_env(
    run: Any, rank: int, nnodes: int, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """What the operator renders for pod `rank` (as the local executor maps it onto loopback)."""
    return {
        **run.env,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "NNODES": str(nnodes),
        "NPROC_PER_NODE": "1",
        "JOB_COMPLETION_INDEX": str(rank),  # NODE_RANK derived from it, as on Kubernetes
        "POD_IP": "127.0.0.1",
        "LORAJOB_WORK_DIR": str(run.work_dir / f"node{rank}"),  # no shared disk
        "LORAJOB_RENDEZVOUS_TIMEOUT": "60",
        **(extra or {}),
    }


def start_node(env: dict[str, str], log: Path | None = None) -> subprocess.Popen[str]:
    """One pod's launcher in its own process group (killed as a whole, like a container)."""
    with contextlib.ExitStack() as stack:
        out = subprocess.PIPE if log is None else stack.enter_context(log.open("w"))
        return subprocess.Popen(
            [sys.executable, "-m", "lora_trainer.launch"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def launch_nodes(run: Any, nnodes: int, extra: dict[str, str] | None = None) -> list[Any]:
    port = rendezvous_port()
    return [start_node(node_env(run, rank, nnodes, port, extra)) for rank in range(nnodes)]


def finish(procs: list[Any], timeout: float = 240) -> list[tuple[int, str]]:
    return finish_all(procs, timeout)


@pytest.mark.slow
def test_two_nodes_train_over_gloo(make_run: Any, store: S3Store) -> None:
    run = make_run(spec={"training": {"maxSteps": 8, "checkpointInterval": 4, "microBatchSize": 4}})
    results = finish(launch_nodes(run, 2))
    for code, out in results:
        assert code == 0, out[-3000:]
    assert "world size 2" in results[0][1]
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8
    # Both ranks' RNG states reached the checkpoint (uploaded from each node's disk).
    names = store.list(run.location.child("checkpoint-8"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "MANIFEST.json"} <= set(names)
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))


@pytest.mark.slow
def test_bad_config_exit_code_survives_torchrun(make_run: Any) -> None:
    """torchrun itself exits 1 whatever its workers return; the launcher still exits 3."""
    raw = make_run().config.to_wire()
    raw["spec"]["dataset"]["format"] = "alpaca"  # fails at config load, before the heavy imports
    results = finish(launch_nodes(make_run(raw=raw), 2))
    assert [code for code, _ in results] == [EXIT_INVALID_CONFIG, EXIT_INVALID_CONFIG]
    assert "spec.dataset.format" in results[0][1] and "alpaca" in results[0][1]


def kill_pod(proc: subprocess.Popen[str], dump_stacks: bool = False) -> None:
    """SIGKILL a node's launcher, torchrun and workers, as a lost pod's container dies (torch
    starts each worker in a session of its own: killing the launcher's group is not enough).
    With dump_stacks, the trainers first print their threads' stacks (a hang's diagnosis)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    if dump_stacks:
        for member in family:
            with contextlib.suppress(psutil.Error):
                if "lora_trainer.main" in " ".join(member.cmdline()):
                    member.send_signal(signal.SIGUSR1)
        time.sleep(2)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()
    proc.wait()


def wait_for_checkpoint(
    store: S3Store, run: Any, procs: list[subprocess.Popen[str]], logs: list[Path], timeout: float
) -> int:
    """The first complete checkpoint's step, polled while every node still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = store.complete_checkpoints(run.location)
        if done:
            return done[0]
        for proc, log in zip(procs, logs, strict=True):
            tail = log.read_text()[-4000:]
            assert proc.poll() is None, f"a node ended before the first checkpoint:\n{tail}"
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint within {timeout:.0f}s:\n{logs[0].read_text()[-4000:]}")


def finish_logged(
    procs: list[subprocess.Popen[str]], logs: list[Path], timeout: float
) -> list[tuple[int, str]]:
    """(exit code, log) of nodes writing to files (no pipe to fill up and block a node)."""
    deadline = time.monotonic() + timeout
    results = []
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            note = ""
        except subprocess.TimeoutExpired:
            kill_pod(proc, dump_stacks=True)
            note = f"\n[test] timed out after {timeout:.0f}s: stacks above, pod killed"
        results.append((proc.returncode, log.read_text() + note))
    return results


@pytest.mark.slow
def test_lost_worker_node_rejoins_and_resumes(
    make_run: Any, store: S3Store, tmp_path: Path
) -> None:
    """Issue #5/#6: SIGKILL node 1's pod after the first checkpoint; the Job's replacement pod
    joins node 0's c10d rendezvous (node 0's agent restarts its failed worker) and the run ends
    with every configured step, resumed from S3, instead of hanging until the timeout."""
    run = make_run(
        spec={
            "training": {
                "maxSteps": 8,
                "checkpointInterval": 2,
                "microBatchSize": 4,
                "evalInterval": 8,
            }
        }
    )
    port = rendezvous_port()
    extra = {"LORAJOB_STEP_DELAY_S": "0.7"}
    envs = [node_env(run, rank, 2, port, extra) for rank in range(2)]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log", tmp_path / "node1-retry.log"]
    started = time.monotonic()
    procs = [start_node(envs[0], logs[0]), start_node(envs[1], logs[1])]
    try:
        checkpoint = wait_for_checkpoint(store, run, procs, logs[:2], timeout=100)
        kill_pod(procs[1])
        procs.append(start_node(envs[1], logs[2]))  # the Job retries index 1 only
        results = finish_logged([procs[0], procs[2]], [logs[0], logs[2]], timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_pod(proc)
    elapsed = time.monotonic() - started
    for code, out in results:
        assert code == 0, out[-5000:]
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8, progress
    resumed = [f"resuming from checkpoint-{step}" for step in (checkpoint, checkpoint + 2)]
    for _, out in results:  # node 0's restarted worker and the replacement both resumed
        assert any(line in out for line in resumed), out[-5000:]
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
    assert elapsed < 150, f"took {elapsed:.0f}s"


def test_torchrun_command_uses_c10d_hosted_by_node_0() -> None:
    topo = Topology(
        nnodes=2, nproc_per_node=8, node_rank=0, master_addr="j-0.j.ns.svc", master_port=29500
    )
    rdzv = rendezvous_from_env({"POD_IP": "10.0.0.7"}, topo, 600)
    assert rdzv == Rendezvous("c10d", "j-0.j.ns.svc", "10.0.0.7", 3, 600)
    command = torchrun_command(topo, ["--config", "c.yaml"], rdzv)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[-4:] == ["-m", "lora_trainer.main", "--config", "c.yaml"]
    flags = command[3:-4]
    assert flags == [
        "--nproc-per-node=8",
        "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT",  # SIGTERM: the launcher's (preemption)
        "--nnodes=2:2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=j-0.j.ns.svc:29500",
        "--rdzv-id=j-0.j.ns.svc",
        "--rdzv-conf=is_host=true,join_timeout=600,read_timeout=60",
        "--max-restarts=3",
        "--local-addr=10.0.0.7",
    ]
    assert not any(f.startswith(("--node-rank", "--master-")) for f in flags)  # torch ranks nodes

    worker = Topology(2, 1, 1, "127.0.0.1", 29400)
    env = {"LORAJOB_RDZV_ID": "run-7", "LORAJOB_MAX_RESTARTS": "0"}
    flags = torchrun_command(worker, [], rendezvous_from_env(env, worker, 7.5))
    assert "--rdzv-conf=is_host=false,join_timeout=8,read_timeout=8" in flags
    assert "--rdzv-id=run-7" in flags and "--max-restarts=0" in flags
    assert not any(f.startswith("--local-addr") for f in flags)  # torch falls back to the FQDN


def test_static_rendezvous_is_still_available() -> None:
    topo = Topology(2, 1, 1, "127.0.0.1", 29400)
    rdzv = rendezvous_from_env({"LORAJOB_RENDEZVOUS": "static"}, topo, 60)
    flags = torchrun_command(topo, [], rdzv)
    for flag in ("--nnodes=2", "--node-rank=1", "--master-addr=127.0.0.1", "--max-restarts=0"):
        assert flag in flags
    assert not any(f.startswith("--rdzv-backend") for f in flags)


def test_bad_rendezvous_env_is_a_clear_config_error() -> None:
    topo = Topology(2, 1, 0, "127.0.0.1", 29400)
    cases = {
        "LORAJOB_RENDEZVOUS": ("etcd", "must be one of c10d, static"),
        "LORAJOB_MAX_RESTARTS": ("-1", "must be an integer >= 0"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(LaunchError, match=message) as info:
            rendezvous_from_env({name: value}, topo, 60)
        assert info.value.code == EXIT_INVALID_CONFIG
    with pytest.raises(LaunchError, match="LORAJOB_MAX_RESTARTS must be an integer"):
        rendezvous_from_env({"LORAJOB_MAX_RESTARTS": "many"}, topo, 60)


def test_bad_config_stops_torchrun_restarts(tmp_path: Path) -> None:
    """A worker's exit 3 ends the launcher at once with 3: restarts would only repeat it."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "exit-1").write_text("3")
    started = time.monotonic()
    assert supervise(sleeper, tmp_path, poll_s=0.05) == EXIT_INVALID_CONFIG
    assert sleeper.poll() is not None and time.monotonic() - started < 10
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    assert supervise(quick, tmp_path / "none", poll_s=0.05) == EXIT_TRANSIENT


def test_topology_from_env() -> None:
    topo = topology_from_env(
        {"NNODES": "4", "NPROC_PER_NODE": "8", "JOB_COMPLETION_INDEX": "3", "MASTER_ADDR": "a"}
    )
    assert (topo.nnodes, topo.nproc_per_node, topo.node_rank, topo.master_port) == (4, 8, 3, 29500)
    assert topo.world_size == 32
    explicit = topology_from_env({"NNODES": "2", "NPROC_PER_NODE": "1", "NODE_RANK": "1"})
    assert explicit.node_rank == 1
    with pytest.raises(LaunchError, match=r"NODE_RANK 2 is outside 0\.\.1"):
        topology_from_env({"NNODES": "2", "NPROC_PER_NODE": "1", "NODE_RANK": "2"})
    with pytest.raises(LaunchError, match="NNODES must be an integer"):
        topology_from_env({"NNODES": "two"})
    assert rendezvous_timeout({}) == 600
    assert rendezvous_timeout({"LORAJOB_RENDEZVOUS_TIMEOUT": "30"}) == 30
    for bad in ("soon", "0", "-5"):
        with pytest.raises(LaunchError, match="must be a positive number of seconds") as info:
            rendezvous_timeout({"LORAJOB_RENDEZVOUS_TIMEOUT": bad})
        assert info.value.code == EXIT_INVALID_CONFIG


def test_waits_time_out_with_clear_messages() -> None:
    with pytest.raises(LaunchError, match="did not resolve within 1s") as dns:
        wait_for_dns("job-0.no-such-service.invalid", timeout_s=1, interval_s=0.2)
    assert dns.value.code == EXIT_TRANSIENT
    with pytest.raises(LaunchError, match="did not accept connections") as port:
        wait_for_port("127.0.0.1", free_port(), timeout_s=1, interval_s=0.2)
    assert port.value.code == EXIT_TRANSIENT


def test_worker_exit_codes(tmp_path: Path) -> None:
    assert worker_exit_code(tmp_path, 0) == 0
    assert worker_exit_code(tmp_path, 1) == EXIT_TRANSIENT
    (tmp_path / "exit-1").write_text("75")
    (tmp_path / "exit-0").write_text("3")
    assert worker_exit_code(tmp_path, 1) == EXIT_INVALID_CONFIG
    # torchrun's success wins: those workers failed in a round that a restart then recovered.
    assert worker_exit_code(tmp_path, 0) == 0


def test_unresolvable_master_exits_transient(make_run: Any) -> None:
    run = make_run()
    result = run.run(
        module="lora_trainer.launch",
        extra_env={
            "NNODES": "2",
            "NODE_RANK": "1",
            "NPROC_PER_NODE": "1",
            "MASTER_ADDR": "job-0.missing.default.svc.invalid",
            "LORAJOB_RENDEZVOUS_TIMEOUT": "1",
        },
    )
    assert result.returncode == EXIT_TRANSIENT
    assert "MASTER_ADDR 'job-0.missing.default.svc.invalid' did not resolve" in result.stderr


def test_collective_timeout_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead peer under NCCL blocks a collective this long (transformers' default: 1800 s)."""
    from lora_trainer.errors import InvalidConfigError
    from lora_trainer.train import DEFAULT_DDP_TIMEOUT_S, collective_timeout

    monkeypatch.delenv("LORAJOB_DDP_TIMEOUT_S", raising=False)
    assert collective_timeout() == DEFAULT_DDP_TIMEOUT_S < 1800
    monkeypatch.setenv("LORAJOB_DDP_TIMEOUT_S", "120")
    assert collective_timeout() == 120
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("LORAJOB_DDP_TIMEOUT_S", bad)
        with pytest.raises(InvalidConfigError, match="LORAJOB_DDP_TIMEOUT_S must be a positive"):
            collective_timeout()
