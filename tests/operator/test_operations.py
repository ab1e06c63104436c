"""What a platform team scrapes and probes: the Prometheus metrics port and the liveness endpoint
of the real operator process."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import (
    NAMESPACE,
    Harness,
    free_port,
    gpu_job,
    operator_config,
    prepare_harness,
    start_operator,
)

from lora_devkit.emulator import RestClient
from lora_devkit.operator_process import stop_operator
from lora_devkit.s3server import S3Server


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def observed(
    cluster: tuple[RestClient, Path], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, int, int]]:
    client, kubeconfig = cluster
    workdir = tmp_path_factory.mktemp("operations")
    config = operator_config(s3)
    config["quotas"] = {"default": {"gpus": 4}}
    harness = prepare_harness(client, s3, kubeconfig, workdir, config)
    metrics_port, liveness_port = free_port(), free_port()
    process = start_operator(
        kubeconfig,
        harness.config_path,
        workdir / "operator.log",
        f"--metrics-port={metrics_port}",
        f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
    )
    harness.operator = process
    harness.log_path = workdir / "operator.log"
    try:
        yield harness, metrics_port, liveness_port
    finally:
        harness.clean_up()
        stop_operator(process)


def test_metrics_report_phases_queue_and_gpus_against_quota(
    observed: tuple[Harness, int, int],
) -> None:
    harness, metrics_port, _ = observed
    harness.apply(gpu_job("metrics-a", 2))
    harness.wait_phase("metrics-a", "Running")
    harness.apply(gpu_job("metrics-b", 4))
    harness.wait_phase("metrics-b", "Queued")
    expected = [
        'lorajob_jobs{phase="Running"} 1.0',
        'lorajob_jobs{phase="Queued"} 1.0',
        f'lorajob_queue_length{{namespace="{NAMESPACE}"}} 1.0',
        f'lorajob_gpus_in_use{{gpu_type="A100-80GB",namespace="{NAMESPACE}"}} 2.0',
        f'lorajob_gpu_quota{{gpu_type="A100-80GB",namespace="{NAMESPACE}"}} 4.0',
        "lorajob_reconcile_duration_seconds_count",
        "lorajob_operator_leader 1.0",  # no election: this one acts
    ]

    def missing() -> list[str]:
        _, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        absent = [line for line in expected if line not in text]
        assert not absent, absent
        return expected

    harness.wait("the metrics to show one running and one queued job", missing, timeout=20)


def test_liveness_endpoint_answers(observed: tuple[Harness, int, int]) -> None:
    harness, _, liveness_port = observed

    def healthy() -> bool:
        try:
            status, _ = _get(f"http://127.0.0.1:{liveness_port}/healthz")
        except OSError as exc:  # not listening yet: the operator is still starting
            raise AssertionError(str(exc)) from exc
        return status == 200

    assert harness.wait("the liveness endpoint to answer 200", healthy, timeout=20)
