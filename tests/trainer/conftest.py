"""Shared fixtures: one tiny model + tokenizer, datasets, one S3 server per session, and helpers
that render a TrainerConfig the way the operator does and run the trainer as a real process."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_contract.types import TrainerConfig
from lora_devkit.s3server import S3Server
from lora_devkit.tinymodel import build_tiny_model, write_datasets

BUCKET = "lorajobs-test"


@pytest.fixture(scope="session")
def pvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LORAJOB_PVC_ROOT: the model lives at pvc://models/tiny, as on a cluster's PVC."""
    root = tmp_path_factory.mktemp("pvc")
    build_tiny_model(root / "models" / "tiny")
    return root


@pytest.fixture(scope="session")
def model_dir(pvc_root: Path) -> Path:
    return pvc_root / "models" / "tiny"


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_datasets(tmp_path_factory.mktemp("data"), n=96)
    return {fmt.value: path for fmt, path in paths.items()}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.ensure_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def store(s3: S3Server) -> S3Store:
    return s3.store()


@dataclass
class Run:
    """A rendered TrainerConfig on disk plus where its outputs land."""

    config: TrainerConfig
    config_path: Path
    location: S3Location
    work_dir: Path
    env: dict[str, str]

    def run(
        self,
        module: str = "lora_trainer.main",
        extra_env: dict[str, str] | None = None,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # torchrun and its workers too can be stopped as a group
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            out, err = proc.communicate()
            err += f"\n[test] timed out after {timeout:.0f}s: stacks above, process group killed"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run_here(self, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
        """`lora_trainer.main.main()` in this process (no interpreter start-up: seconds faster)
        with the run's environment; returns (exit code, termination message)."""
        from lora_trainer.main import main

        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        termination = self.config_path.with_suffix(".termination-log")
        termination.write_text("")
        monkeypatch.setenv("LORAJOB_TERMINATION_LOG", str(termination))
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in a subprocess: the same numerics
        try:
            code = main([])
        finally:
            torch.set_num_threads(threads)
        return code, termination.read_text()

    def popen(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "lora_trainer.main"],
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def rendezvous_port() -> int:
    """A free port for torchrun's store, drawn below Linux's ephemeral range (32768+), where
    `bind(0)` never hands ports out: other tests on this machine that ask the kernel for a free
    port cannot take it between this check and torchrun's bind (a node could otherwise join a
    stranger's rendezvous)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999 for the rendezvous")


def stop_tree(proc: subprocess.Popen[str]) -> None:
    """After a timeout: every trainer process prints its threads' stacks (SIGUSR1, see
    lora_trainer.main), then the whole process group (launcher, torchrun, workers) is killed."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    for member in family:
        with contextlib.suppress(psutil.Error):
            if "lora_trainer.main" in " ".join(member.cmdline()):
                member.send_signal(signal.SIGUSR1)
    time.sleep(2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish_all(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str]]:
    """(exit code, output) of processes started with start_new_session and one output pipe,
    all within one deadline; on timeout, stack dumps and the process groups killed."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            out, _ = proc.communicate()
            out += f"\n[test] timed out after {timeout:.0f}s: stacks above, process group killed"
        results.append((proc.returncode, out))
    return results


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def base_spec(dataset: Path, fmt: str) -> dict[str, Any]:
    return {
        "baseModel": {"name": "tiny-llama", "source": "pvc://models/tiny"},
        "dataset": {"source": str(dataset), "format": fmt, "maxSeqLength": 64, "evalSplit": 0.1},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
        "training": {
            "maxSteps": 24,
            "microBatchSize": 8,
            "gradientAccumulation": 1,
            "learningRate": 1e-2,
            "warmupRatio": 0.0,
            "scheduler": "constant",
            "logInterval": 4,
            "evalInterval": 8,
            "checkpointInterval": 8,
            "keepCheckpoints": 2,
            "gradientCheckpointing": False,
        },
        "resources": {"gpuType": "cpu"},
        "output": {"bucket": BUCKET, "prefix": "runs"},
    }


@pytest.fixture
def make_run(tmp_path: Path, s3: S3Server, pvc_root: Path, datasets: dict[str, Path]) -> Any:
    """make_run(fmt="prompt-completion", spec={...overrides}, raw=None) -> Run."""

    def factory(
        fmt: str = "prompt-completion",
        spec: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        deepspeed: dict[str, Any] | None = None,
    ) -> Run:
        job = f"job-{uuid.uuid4().hex[:8]}"
        merged = deep_merge(base_spec(datasets[fmt], fmt), spec or {})
        location = S3Location(BUCKET, f"runs/{job}/r1")
        document: dict[str, Any] = raw or {
            "jobName": job,
            "namespace": "default",
            "runId": "r1",
            "outputUri": location.uri,
            "spec": merged,
        }
        if deepspeed is not None:
            document["deepspeed"] = deepspeed
        path = tmp_path / f"{job}.yaml"
        path.write_text(yaml.safe_dump(document))
        config = TrainerConfig.model_validate(document) if raw is None else None
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))},
            **s3.env(),
            "LORAJOB_CONFIG": str(path),
            "LORAJOB_PVC_ROOT": str(pvc_root),
            "LORAJOB_WORK_DIR": str(tmp_path / "work"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        return Run(config, path, location, tmp_path / "work", env)  # type: ignore[arg-type]

    return factory


def fake_checkpoint(root: Path, step: int) -> Path:
    """What the Trainer leaves on disk for checkpoint-<step>: an adapter whose size is the step,
    and its trainer state."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * step)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return folder
