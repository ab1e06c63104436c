"""CUDA-only paths, for `pytest -m gpu` on a GPU machine (skipped here by tests/conftest.py):
bitsandbytes 8-bit loading, QLoRA (NF4) end to end through the real trainer process with the
8-bit and paged optimizers in bf16, and the GPU memory peak reported in the metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.storage import S3Store
from lora_contract.types import LoRAJobSpec, Progress
from lora_trainer.model import apply_lora, load_base_model

pytestmark = pytest.mark.gpu

GPU = {"resources": {"gpuType": "A100-80GB"}}


def gpu_spec(mode: str) -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": "pvc://models/tiny"},
            "dataset": {"source": "/d.jsonl", "format": "chat"},
            "quantization": {"mode": mode, "computeDtype": "bf16"},
            "lora": {"targetModules": ["all-linear"], "r": 4},
            "output": {"bucket": "out"},
            **GPU,
        }
    )


def test_int8_load_and_lora_backward_on_cuda(model_dir: Path) -> None:
    import bitsandbytes as bnb
    import torch

    spec = gpu_spec("int8")
    model: Any = apply_lora(load_base_model(model_dir, spec, local_rank=0), spec)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    ids = torch.tensor([[1, 20, 30, 40, 50]], device="cuda")
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("optimizer", ["paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit"])
def test_qlora_trains_with_kbit_optimizer(make_run: Any, store: S3Store, optimizer: str) -> None:
    run = make_run(
        spec={
            **GPU,
            "quantization": {"mode": "nf4", "doubleQuant": True, "computeDtype": "bf16"},
            "training": {
                "optimizer": optimizer,
                "maxSteps": 16,
                "checkpointInterval": 8,
                "gradientCheckpointing": True,
            },
        }
    )
    result = run.run()
    assert result.returncode == 0, result.stderr[-4000:]
    assert "; cuda" in result.stderr
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 16
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    records = [json.loads(line) for line in data.decode().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0], losses
    peaks = [r["gpu_memory_peak_gib"] for r in records if "loss" in r]
    assert all(p is not None and p > 0 for p in peaks), peaks
    names = store.list(run.location.child("checkpoint-16"))
    assert {"adapter_model.safetensors", "optimizer.pt", "MANIFEST.json"} <= set(names)
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
