"""DeepSpeed: the generated ZeRO configs are accepted by DeepSpeed itself and agree with the
trainer's batch numbers, and ZeRO-2 trains the tiny model for real on CPU (DeepSpeed's CPU
accelerator with gloo). ZeRO-3 on two processes: test_zero3.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lora_contract.storage import S3Store
from lora_contract.types import LoRAJobSpec, Offload, Progress, Strategy, TrainingOverrides
from lora_operator.deepspeed_config import deepspeed_config
from lora_trainer.deepspeed_setup import batch_mismatch

from .conftest import rendezvous_port


def spec(**distributed: Any) -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "m", "source": "pvc://models/m"},
            "dataset": {"source": "/data/train.jsonl", "format": "chat"},
            "output": {"bucket": "out"},
            "training": {"microBatchSize": 2, "gradientAccumulation": 4, "maxGradNorm": 0.5},
            "distributed": distributed,
        }
    )


def test_ddp_has_no_deepspeed_config() -> None:
    assert deepspeed_config(spec(), Strategy.ddp) is None
    assert deepspeed_config(spec(), Strategy.auto) is None


@pytest.mark.parametrize("strategy", [Strategy.deepspeed_zero2, Strategy.deepspeed_zero3])
@pytest.mark.parametrize("offload", [Offload.none, Offload.cpu])
def test_zero_configs_accepted_by_deepspeed(strategy: Strategy, offload: Offload) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = deepspeed_config(spec(offload=offload.value), strategy)
    assert config is not None
    zero = config["zero_optimization"]
    assert zero["stage"] == (2 if strategy == Strategy.deepspeed_zero2 else 3)
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert ("offload_optimizer" in zero) == (offload == Offload.cpu)
    assert ("optimizer" in config) == (offload == Offload.cpu)
    if strategy == Strategy.deepspeed_zero3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True

    # The HF Trainer fills the "auto" values, then DeepSpeed parses and checks the result.
    hf = HfTrainerDeepSpeedConfig(config)
    args = TrainingArguments(
        output_dir="/tmp/unused",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_grad_norm=0.5,
        bf16=True,
        use_cpu=True,
    )
    hf.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=4096))
    hf.trainer_config_finalize(args, model=model, num_training_steps=100)
    filled = hf.config
    assert "auto" not in str(filled["train_batch_size"])
    parsed = DeepSpeedConfig(filled)
    assert parsed.zero_optimization_stage == zero["stage"]
    assert parsed.train_micro_batch_size_per_gpu == 2


@pytest.mark.parametrize("strategy", [Strategy.deepspeed_zero2, Strategy.deepspeed_zero3])
def test_config_rendered_with_the_plans_overrides_agrees_with_the_trainer(
    strategy: Strategy,
) -> None:
    """The plan keeps the spec's global batch (2 x 4) on 4 ranks with per-rank overrides (1 x 2);
    the config rendered from the overridden spec is what the trainer, given the same overrides,
    accepts on 4 ranks, and the Trainer fills the global batch ("auto")."""
    overridden = TrainingOverrides(micro_batch_size=1, gradient_accumulation=2).applied_to(spec())
    config = deepspeed_config(overridden, strategy)
    assert config is not None and config["train_batch_size"] == "auto"
    assert batch_mismatch(config, micro=1, accumulation=2, world_size=4) is None
    # rendered from the spec without the overrides, the trainer would refuse it (exit 3)
    unplanned = deepspeed_config(spec(), strategy)
    assert unplanned is not None
    assert batch_mismatch(unplanned, micro=1, accumulation=2, world_size=4) is not None


def test_fp16_compute_dtype_enables_fp16() -> None:
    fp16 = spec()
    fp16.quantization.compute_dtype = "fp16"  # type: ignore[assignment]
    config = deepspeed_config(fp16, Strategy.deepspeed_zero2)
    assert config is not None
    assert config["fp16"]["enabled"] is True and config["bf16"]["enabled"] is False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "nproc"), [(Strategy.deepspeed_zero2, 2), (Strategy.deepspeed_zero3, 1)]
)
def test_zero_trains_on_cpu(make_run: Any, store: S3Store, strategy: Strategy, nproc: int) -> None:
    """ZeRO-2 with two processes through the launcher (torchrun, gloo); ZeRO-3 with one."""
    overrides = {"training": {"maxSteps": 8, "checkpointInterval": 4, "microBatchSize": 4}}
    first = make_run(spec=overrides)
    run = make_run(spec=overrides, deepspeed=deepspeed_config(first.config.spec, strategy))
    result = run.run(
        module="lora_trainer.launch",
        extra_env={
            "NNODES": "1",
            "NPROC_PER_NODE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(rendezvous_port()),
        },
    )
    assert result.returncode == 0, result.stderr[-4000:]
    stage = 2 if strategy == Strategy.deepspeed_zero2 else 3
    assert f"deepspeed ZeRO-{stage}" in result.stderr
    assert f"world size {nproc}" in result.stderr
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8
    assert progress.loss is not None
    # DeepSpeed's own (sharded) optimizer state is part of the resumable checkpoint.
    files = store.list(run.location.child("checkpoint-8"), recursive=True)
    assert any(name.startswith("global_step8/") for name in files), files
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))


@pytest.mark.gpu
def test_zero3_offload_trains_on_gpu(make_run: Any, store: S3Store) -> None:
    """CPU offload needs DeepSpeed's CPUAdam (a compiled op) and CUDA."""
    overrides = {"resources": {"gpuType": "A100-80GB"}, "distributed": {"offload": "cpu"}}
    base = make_run(spec=overrides)
    ds = deepspeed_config(base.config.spec, Strategy.deepspeed_zero3)
    run = make_run(spec=overrides, deepspeed=ds)
    result = run.run(module="lora_trainer.launch", extra_env={"NPROC_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
