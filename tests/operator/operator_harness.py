"""What the operator tests share: LoRAJob bodies, the `Harness` (API client, Job/Pod stand-in,
S3, operator config) and starting/stopping the real operator process (`lorajob run`)."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from job_driver import JobDriver

from lora_devkit.emulator import RestClient
from lora_devkit.operator_process import start_operator as shared_start_operator
from lora_devkit.s3server import S3Server

LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
REPO = Path(__file__).resolve().parents[2]
BUCKET = "lora-test"
SECRET = "s3-creds"
NAMESPACE = os.environ.get("LORAJOB_TEST_NAMESPACE", "default")
REAL_CLUSTER = bool(os.environ.get("KUBECONFIG")) and os.environ.get("LORAJOB_TEST_REAL") == "1"


def base_job(name: str, **overrides: Any) -> dict[str, Any]:
    """A CPU LoRAJob (plans without GPUs) writing to the test bucket."""
    job: dict[str, Any] = {
        "apiVersion": "finetune.lora-operator.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"name": "meta-llama/Llama-3.2-1B", "source": "pvc://models/llama-1b"},
            "lora": {"r": 8, "alpha": 16},
            "dataset": {
                "source": "pvc://data/train.jsonl",
                "format": "prompt-completion",
                "maxSeqLength": 256,
            },
            "training": {"maxSteps": 40},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": BUCKET, "prefix": "runs"},
        },
    }
    for path, value in overrides.items():
        node = job["spec"]
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return job


def gpu_job(name: str, gpus: int, **overrides: Any) -> dict[str, Any]:
    return base_job(
        name,
        **{
            "resources.gpuType": "A100-80GB",
            "distributed.nodes": 1,
            "distributed.gpusPerNode": gpus,
            "distributed.strategy": "ddp",
            **overrides,
        },
    )


class Harness:
    """What a test needs: the API client, the Job/Pod stand-in, S3, the config file."""

    def __init__(
        self, client: RestClient, s3: S3Server, config_path: Path, kubeconfig: Path
    ) -> None:
        self.client = client
        self.driver = JobDriver(client, NAMESPACE)
        self.s3 = s3
        self.config_path = config_path
        self.kubeconfig = kubeconfig
        self.namespace = NAMESPACE
        self.operator: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.created: list[str] = []

    def clean_up(self) -> None:
        """Delete the LoRAJobs a test made, so later tests in the module do not share the
        operator with them; what they own goes with them (the emulator's garbage collector, or
        the cluster's)."""
        for name in self.created:
            self.client.delete(LORAJOBS, NAMESPACE, name)
        self.created.clear()

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no operator log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def apply(self, job: dict[str, Any]) -> dict[str, Any]:
        self.created.append(job["metadata"]["name"])
        return self.client.create(LORAJOBS, NAMESPACE, copy.deepcopy(job))  # type: ignore[no-any-return]

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.client.patch(LORAJOBS, NAMESPACE, name, {"spec": spec}, status=False)

    def get(self, name: str) -> dict[str, Any]:
        obj = self.client.get(LORAJOBS, NAMESPACE, name)
        assert obj is not None, f"LoRAJob {name} is gone"
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait(
        self, what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except AssertionError as exc:
                last = exc
                last_ok = False
            else:
                last_ok = bool(last)
            if last_ok:
                return last
            time.sleep(interval)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; last: {last!r}\n"
            f"--- operator log ---\n{self.log_tail()}"
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        result: dict[str, Any] = self.wait(f"{name} phase {phase}", check, timeout)
        return result

    def job(self, name: str) -> dict[str, Any] | None:
        return self.client.get("batch/v1/jobs", NAMESPACE, name)

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.client.list("v1/events", NAMESPACE)
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def run_uri(self, name: str, run: str, namespace: str = NAMESPACE) -> str:
        """The run's folder as the operator recorded it (RunRecord.outputURI) when it started."""

        def recorded() -> str | None:
            obj = self.client.get(LORAJOBS, namespace, name) or {}
            runs = (obj.get("status") or {}).get("runs") or []
            return next((str(r["outputURI"]) for r in runs if r.get("id") == run), None)

        uri: str = self.wait(f"run {run} of {namespace}/{name} recorded", recorded)
        return uri

    def write_progress(
        self, name: str, run: str, *, namespace: str = NAMESPACE, **fields: Any
    ) -> None:
        """What the trainer would write: progress.json in the run's recorded folder."""
        from lora_contract.layout import PROGRESS_FILE, S3Location

        body = {"state": "running", "step": 0, "totalSteps": 40, **fields}
        location = S3Location.parse(self.run_uri(name, run, namespace)).child(PROGRESS_FILE)
        self.s3.store().put_json(location, body)

    def set_config(self, **config: Any) -> None:
        base = operator_config(self.s3)
        base.update(config)
        self.config_path.write_text(yaml.safe_dump(base))
        # mtime resolution: make sure the change is seen as one
        stamp = time.time() + 1
        os.utime(self.config_path, (stamp, stamp))


def prepare_harness(
    client: RestClient,
    s3: S3Server,
    kubeconfig: Path,
    workdir: Path,
    config: dict[str, Any] | None = None,
) -> Harness:
    """Write the operator config (default: `operator_config`) and make sure the S3 credentials
    Secret exists: what every test that starts its own operator needs first."""
    from lora_devkit.operator_process import secret_manifest

    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config or operator_config(s3)))
    if client.get("v1/secrets", NAMESPACE, SECRET) is None:
        client.create(
            "v1/secrets",
            NAMESPACE,
            secret_manifest(SECRET, NAMESPACE, s3.access_key, s3.secret_key),
        )
    return Harness(client, s3, config_path, kubeconfig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def operator_config(s3: S3Server) -> dict[str, Any]:
    return {
        "trainerImage": "lora-trainer:test",
        "s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}},
        "progressIntervalSeconds": 1,
    }


def start_operator(
    kubeconfig: Path, config_path: Path, log_path: Path, *extra_args: str
) -> subprocess.Popen[bytes]:
    return shared_start_operator(
        kubeconfig, config_path, NAMESPACE, log_path, "--resync-seconds", "0.5", *extra_args
    )
