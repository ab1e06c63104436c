"""The multi-node path through the real launcher: two `python -m lora_trainer.launch` processes
(NNODES=2, NODE_RANK 0/1, MASTER_ADDR=127.0.0.1) rendezvous over gloo, as the operator's pods do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_operator.api.types import EXIT_INVALID_CONFIG, EXIT_TRANSIENT, Progress
from lora_operator.local.s3server import free_port
from lora_operator.storage import S3Store
from lora_trainer.launch import (
    LaunchError,
    rendezvous_timeout,
    topology_from_env,
    wait_for_dns,
    wait_for_port,
    worker_exit_code,
)

from .conftest import finish_all, rendezvous_port


def launch_nodes(run: Any, nnodes: int, extra: dict[str, str] | None = None) -> list[Any]:
    port = str(rendezvous_port())
    procs = []
    for rank in range(nnodes):
        env = {
            **run.env,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "NNODES": str(nnodes),
            "NPROC_PER_NODE": "1",
            "JOB_COMPLETION_INDEX": str(rank),  # NODE_RANK derived from it, as on Kubernetes
            "LORAJOB_WORK_DIR": str(run.work_dir / f"node{rank}"),  # no shared disk
            "LORAJOB_RENDEZVOUS_TIMEOUT": "60",
            **(extra or {}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lora_trainer.launch"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    return procs


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
