"""DeepSpeed ZeRO-3 with two processes on CPU (DeepSpeed's CPU accelerator, gloo) through the
launcher: the model loads partitioned (`zero.Init` inside `from_pretrained`), trains to completion
with the chunked loss on lm_head's gathered weight, and a second attempt resumes from the run's
own checkpoint (DeepSpeed's sharded optimizer state included) to the same losses and adapter.
One test holds both runs: each costs a minute of two processes on two cores."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors

from lora_contract.storage import S3Store
from lora_contract.types import Progress, Strategy
from lora_operator.deepspeed_config import deepspeed_config

from .conftest import rendezvous_port

SPEC = {
    "training": {
        "maxSteps": 4,
        "checkpointInterval": 2,
        "keepCheckpoints": 2,
        "microBatchSize": 4,
        "logInterval": 1,
        "evalInterval": 4,
        "gradientCheckpointing": True,  # the default: layer recomputes beside the loss's gathers
    }
}


def zero3_run(make_run: Any, spec: dict[str, Any]) -> Any:
    """A run whose DeepSpeed config the operator's renderer made from the run's own spec."""
    first = make_run(spec=spec)
    ds = deepspeed_config(first.config.spec, Strategy.deepspeed_zero3)
    return make_run(spec=spec, deepspeed=ds)


def two_processes() -> dict[str, str]:
    return {
        "NNODES": "1",
        "NPROC_PER_NODE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(rendezvous_port()),
    }


def losses_by_step(store: S3Store, run: Any) -> dict[int, float]:
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    records = [json.loads(line) for line in data.decode().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_adapter(store: S3Store, run: Any) -> dict[str, torch.Tensor]:
    data = store.get_bytes(run.location.child("final", "adapter_model.safetensors"))
    assert data is not None
    return load_safetensors(data)


@pytest.mark.slow
def test_zero3_two_processes_train_to_completion_then_resume(make_run: Any, store: S3Store) -> None:
    run = zero3_run(make_run, SPEC)
    first = run.run(module="lora_trainer.launch", extra_env=two_processes())
    assert first.returncode == 0, first.stderr[-6000:]
    log = first.stderr
    assert "deepspeed ZeRO-3" in log and "world size 2" in log and "loss chunked" in log
    assert "chunked loss under ZeRO-3: lm_head's" in log  # the gathered path, not a fallback
    done = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert done.state == "succeeded" and done.step == done.total_steps == 4
    assert store.complete_checkpoints(run.location) == [2, 4]
    shards = store.list(run.location.child("checkpoint-2"), recursive=True)
    assert any(name.startswith("global_step2/") for name in shards), shards
    losses, adapter = losses_by_step(store, run), final_adapter(store, run)
    assert sorted(losses) == [1, 2, 3, 4]

    # As if the pod had died after checkpoint-2: the retry resumes there and trains steps 3-4.
    store.delete_prefix(run.location.child("checkpoint-4"))
    store.delete_prefix(run.location.child("final"))
    second = run.run(module="lora_trainer.launch", extra_env=two_processes())
    assert second.returncode == 0, second.stderr[-6000:]
    assert "resuming from checkpoint-2" in second.stderr, second.stderr[-3000:]
    done = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert done.state == "succeeded" and done.step == done.total_steps == 4
    assert store.complete_checkpoints(run.location) == [2, 4]
    # Same data order, optimizer and RNG state: the same losses and the same adapter.
    resumed = losses_by_step(store, run)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-4), step
    again = final_adapter(store, run)
    assert again.keys() == adapter.keys() and adapter
    for name, weight in adapter.items():
        assert torch.allclose(again[name], weight, rtol=1e-4, atol=1e-6), name


@pytest.mark.gpu
def test_zero3_qlora_loads_and_trains_on_gpu(make_run: Any, store: S3Store) -> None:
    """QLoRA under ZeRO-3: NF4 weights stored in the compute dtype (`bnb_4bit_quant_storage`),
    no device_map, DeepSpeed partitions them at `deepspeed.initialize`; the chunked loss then
    gathers lm_head (partitioned only after the Trainer exists)."""
    spec = {
        "resources": {"gpuType": "A100-80GB"},
        "quantization": {"mode": "nf4", "computeDtype": "bf16"},
        "training": {"maxSteps": 4, "checkpointInterval": 2, "logInterval": 1},
    }
    run = zero3_run(make_run, spec)
    result = run.run(module="lora_trainer.launch", extra_env={"NPROC_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "deepspeed ZeRO-3" in result.stderr and "; cuda" in result.stderr
    assert "chunked loss under ZeRO-3: lm_head's" in result.stderr
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 4
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
