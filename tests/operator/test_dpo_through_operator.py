"""method: dpo end to end: the real operator process against the emulator, the local executor
running the real trainer on examples/dpo-tiny-cpu.yaml (a few steps of the tiny random-init
Llama, one process: the example asks for no second one), moto S3, to Succeeded. What only this
path shows: the operator's plan in status carries DPO's terms, the reward margin and accuracy
reach status.progress through progress.json, the run record names the adapter, metrics.jsonl
has DPO rows, and the trainer's start-up line names TRL's loss, not the chunked cross-entropy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract.layout import S3Location
from lora_contract.types import LoRAJob
from lora_devkit.demo.workspace import (
    REPO,
    demo_manifest,
    operator_config,
    pvc_path,
    secret_manifest,
    write_model_and_data,
)
from lora_devkit.emulator import EmulatedCluster
from lora_devkit.executor import LocalExecutor, wait_for
from lora_devkit.operator_process import start_operator, stop_operator
from lora_devkit.s3server import S3Server
from lora_devkit.tinymodel import example_pairs, write_jsonl

LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
EXAMPLE = REPO / "examples" / "dpo-tiny-cpu.yaml"
STEPS = 4
PAIRS = 32


def preference_rows(n: int) -> list[dict[str, str]]:
    """The chosen answer follows the data's rule; the rejected one never does."""
    return [
        {"prompt": f"Q: {q}\nA:", "chosen": f" {a}", "rejected": " coconut coconut coconut."}
        for q, a in example_pairs(n)
    ]


def phase_of(client: Any, namespace: str, name: str) -> dict[str, Any] | None:
    status = (client.get(LORAJOBS, namespace, name) or {}).get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


@pytest.mark.slow
def test_a_dpo_job_trains_through_the_operator_to_succeeded(tmp_path: Path) -> None:
    manifest = demo_manifest(EXAMPLE, STEPS)  # intervals scaled: log every step
    name, namespace = manifest["metadata"]["name"], "default"
    manifest["spec"]["training"]["microBatchSize"] = 2
    manifest["spec"]["dataset"].update(numExamples=PAIRS, evalSplit=0.0)  # no eval: time
    job = LoRAJob.model_validate(manifest)
    pvc_root = tmp_path / "pvc"
    write_model_and_data(job, pvc_root)
    write_jsonl(pvc_path(pvc_root, job.spec.dataset.source), preference_rows(PAIRS))
    with EmulatedCluster(tmp_path / "cluster") as cluster, S3Server(use_env=False) as s3:
        client = cluster.client()
        s3.ensure_bucket(job.spec.output.bucket)
        client.create("v1/secrets", namespace, secret_manifest(job, s3.access_key, s3.secret_key))
        config = tmp_path / "operator-config.yaml"
        config.write_text(yaml.safe_dump(operator_config(s3.endpoint, "demo-s3", 0.5)))
        operator = start_operator(
            cluster.kubeconfig, config, namespace, tmp_path / "operator.log", "--resync-seconds=1"
        )
        executor = LocalExecutor(
            client,
            tmp_path / "executor",
            pvc_root=pvc_root,
            namespace=namespace,
            extra_env={"OMP_NUM_THREADS": "1"},
        )
        try:
            with executor:
                client.create(LORAJOBS, namespace, manifest)
                status = wait_for(lambda: phase_of(client, namespace, name), 150)
        finally:
            stop_operator(operator)
        assert status["phase"] == "Succeeded", status
        store = s3.store()

        # the plan in status: DPO's log-prob head replaces SFT's logits; the reference is counted
        breakdown = status["plan"]["breakdownGib"]
        assert breakdown["dpo_logprobs"] > 0 and "dpo_reference" in breakdown
        assert breakdown.get("logits", 0.0) == 0.0  # no logits materialised

        # the reward margin and accuracy from progress.json, in status.progress
        progress = status["progress"]
        assert progress["state"] == "succeeded" and progress["step"] == STEPS
        assert isinstance(progress["rewardMargin"], float)
        assert 0.0 <= progress["rewardAccuracy"] <= 1.0

        # the run record names the adapter, and the adapter is there
        (run,) = status["runs"]
        assert run["phase"] == "Succeeded"
        location = S3Location.parse(run["outputURI"])
        assert run["adapterURI"] == status["adapterURI"] == location.child("final").uri
        assert store.exists(location.child("final", "adapter_model.safetensors"))

        # metrics.jsonl: one DPO row per logged step, each with TRL's loss path and rewards
        lines = (store.get_bytes(location.child("metrics.jsonl")) or b"").decode().splitlines()
        logged = [r for r in map(json.loads, lines) if "loss" in r]
        assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
        assert {r["loss_path"] for r in logged} == {"trl-fused-logprobs"}
        assert all("reward_margin" in r and "reward_accuracy" in r for r in logged)
        assert progress["rewardMargin"] == logged[-1]["reward_margin"]

        # the trainer's start-up line names the loss it really computes
        logs = sorted((tmp_path / "executor" / "logs").glob(f"{namespace}_{name}-r1-*.log"))
        text = "".join(p.read_text() for p in logs)
        assert "; loss trl-fused-logprobs; " in text, text[-2000:]
        assert "; loss chunked; " not in text
