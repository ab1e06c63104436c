"""Fixtures: a real S3 (moto), an emulated cluster (or the real one when KUBECONFIG and
LORAJOB_TEST_REAL=1 are set) and the real operator process (`lorajob run --standalone`), one per
test module so each module pays the start-up once."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_harness import (
    BUCKET,
    REAL_CLUSTER,
    Harness,
    prepare_harness,
    start_operator,
)

from lora_devkit.emulator import EmulatedCluster, RestClient
from lora_devkit.operator_process import stop_operator
from lora_devkit.s3server import S3Server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.ensure_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RestClient, Path]]:
    """The emulator with KServe installed, or the real cluster (LORAJOB_TEST_REAL=1)."""
    if REAL_CLUSTER:
        path = Path(os.environ["KUBECONFIG"])
        yield RestClient.from_kubeconfig(str(path)), path
        return
    with EmulatedCluster(tmp_path_factory.mktemp("k8s"), kserve=True) as emulated:
        yield emulated.client(), emulated.kubeconfig


@pytest.fixture(scope="module")
def harness(
    cluster: tuple[RestClient, Path], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    client, kubeconfig = cluster
    workdir = tmp_path_factory.mktemp("operator")
    h = prepare_harness(client, s3, kubeconfig, workdir)
    log_path = workdir / "operator.log"
    process = start_operator(kubeconfig, h.config_path, log_path)
    h.operator = process
    h.log_path = log_path
    time.sleep(0.5)
    yield h
    assert h.operator is not None
    stop_operator(h.operator)
    if os.environ.get("LORAJOB_TEST_SHOW_LOG"):
        print(log_path.read_text()[-20000:])


@pytest.fixture(autouse=True)
def _clean_up_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the harness, delete its LoRAJobs."""
    yield
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").clean_up()
