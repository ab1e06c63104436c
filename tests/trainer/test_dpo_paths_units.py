"""method dpo on the QLoRA path, in-process and fast: TRL 1.16's DPOTrainer built the way
train.py builds it (our PEFT model, `ref_model=None`) over a real NF4 model (bitsandbytes' CPU
kernels): TRL adds the frozen `ref` adapter as a copy of the starting adapter, and the trainable
adapters keep the dtype the compute dtype calls for (TRL's blanket bf16 cast undone unless the
run computes in bf16). And the ConfigMap the operator renders for a planned DPO job (the 70B
ZeRO-3 and 8B QLoRA examples as `method: dpo`) is one the trainer accepts. The ZeRO-3 path was
trained for real on two CPU processes by hand (docs/training.md, "DPO on the other paths")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (NF4 on bitsandbytes' CPU kernels)
import pytest
import torch
import transformers
import yaml

from lora_contract.storage import S3Store
from lora_contract.types import Progress, TrainerConfig
from lora_trainer.data import ListDataset
from lora_trainer.model import apply_lora, prepare_quantized_model, quantization_config
from lora_trainer.objectives import (
    OBJECTIVES,
    dpo_arguments,
    is_quantized,
    restore_adapter_dtype,
)
from lora_trainer.preference_data import load_pairs
from lora_trainer.train import training_arguments

from .test_dpo import dpo_spec, text_rows, write

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def qlora_dpo_config(tmp_path: Path) -> TrainerConfig:
    spec = dpo_spec(write(tmp_path / "pref.jsonl", text_rows(8)))
    spec["quantization"] = {"mode": "nf4", "computeDtype": "bf16"}
    spec["resources"] = {"gpuType": "L4-24GB"}
    spec["lora"]["targetModules"] = ["q_proj", "v_proj"]
    return TrainerConfig.model_validate(
        {
            "jobName": "j",
            "namespace": "n",
            "runId": "r1",
            "outputUri": "s3://b/p/n/j/r1",
            "spec": spec,
        }
    )


def nf4_peft_model(model_dir: Path, config: TrainerConfig) -> Any:
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.bfloat16,
        quantization_config=quantization_config(config.spec.quantization),
    )
    return apply_lora(prepare_quantized_model(base), config.spec)


def adapter_tensors(model: Any, name: str) -> dict[str, torch.Tensor]:
    marker = f".{name}."
    return {
        key.replace(marker, "."): param.detach().clone()
        for key, param in model.named_parameters()
        if marker in key
    }


def test_qlora_dpo_trainer_adds_the_ref_copy_and_keeps_fp32_adapters(
    model_dir: Path, tmp_path: Path
) -> None:
    config = qlora_dpo_config(tmp_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = load_pairs(tmp_path / "pref.jsonl", "dataset.source", config.spec, tokenizer)
    model = nf4_peft_model(model_dir, config)
    assert is_quantized(model)
    with torch.no_grad():  # a started adapter (B != 0), as with spec.baseAdapter
        for key, param in model.named_parameters():
            if ".default." in key and "lora_B" in key:
                param.fill_(0.01)
    started = adapter_tensors(model, "default")
    shared = training_arguments(config, tmp_path / "out", False, False, 1)
    args = dpo_arguments(config, shared)
    assert args.bf16 is False  # on CPU: the fp32-compute case of a GPU run
    trainer = OBJECTIVES[config.spec.method].trainer(
        tokenizer=tokenizer,
        model=model,
        args=args,
        train_dataset=ListDataset(pairs),
        eval_dataset=None,
    )
    peft_model = trainer.model
    assert set(peft_model.peft_config) == {"default", "ref"}
    ref = adapter_tensors(peft_model, "ref")
    assert ref.keys() == started.keys() and len(ref) == 2 * 2 * 2  # A, B x q, v x 2 layers
    for key, weight in started.items():
        assert torch.equal(ref[key].float(), weight.float()), key
    trainable = {k: p for k, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in k for k in trainable)  # ref is frozen
    assert {p.dtype for p in trainable.values()} == {torch.float32}  # TRL had made them bf16
    # TRL's bf16 cast of a k-bit model (whatever args.bf16 says) skips the frozen ref: it stays
    # in PEFT's fp32, as the memory plan's `dpo_ref_adapter` counts it under bf16 compute too
    assert {t.dtype for t in ref.values()} == {torch.float32}


def test_the_ref_adapter_is_what_the_memory_plan_counts(model_dir: Path, tmp_path: Path) -> None:
    """The tiny model in bf16 (its dtype on a GPU), r 8 on all-linear: the `ref` adapter TRL adds
    holds 16,384 fp32 parameters (hand-worked in tests/memory/test_dpo_memory.py), 65,536
    bytes, the operator's `dpo_ref_adapter` for this model's config.json."""
    from transformers import AutoTokenizer

    from lora_operator.memory import Assumptions, dpo, load_architecture
    from lora_operator.memory.estimate import lora_param_count
    from lora_trainer.model import apply_lora

    config = TrainerConfig.model_validate(
        {
            "jobName": "j",
            "namespace": "n",
            "runId": "r1",
            "outputUri": "s3://b/p/n/j/r1",
            "spec": dpo_spec(write(tmp_path / "pref.jsonl", text_rows(8))),
        }
    )
    lora = config.spec.lora
    assert (lora.r, lora.target_modules) == (8, ["all-linear"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = load_pairs(tmp_path / "pref.jsonl", "dataset.source", config.spec, tokenizer)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    shared = training_arguments(config, tmp_path / "out", False, False, 1)
    trainer = OBJECTIVES[config.spec.method].trainer(
        tokenizer=tokenizer,
        model=apply_lora(base, config.spec),
        args=dpo_arguments(config, shared),
        train_dataset=ListDataset(pairs),
        eval_dataset=None,
    )
    ref = [p for k, p in trainer.model.named_parameters() if ".ref." in k]
    assert not any(p.requires_grad for p in ref)
    assert {p.dtype for p in ref} == {torch.float32}  # PEFT's upcast over a bf16 base
    measured = sum(p.numel() * p.element_size() for p in ref)
    assert sum(p.numel() for p in ref) == 16_384 and measured == 65_536
    arch = load_architecture("tiny", str(model_dir / "config.json"))
    params = lora_param_count(arch, tuple(lora.target_modules), lora.r, lora.use_dora)
    assert dpo.ref_adapter_bytes(params, Assumptions().adapter_bytes, 1) == measured


def test_the_bf16_cast_stands_under_bf16_compute_and_a_plain_model_is_left_alone() -> None:
    class Quantized(torch.nn.Module):
        is_loaded_in_4bit = True

        def __init__(self) -> None:
            super().__init__()
            self.adapter = torch.nn.Linear(2, 2).to(torch.bfloat16)
            self.frozen = torch.nn.Linear(2, 2).to(torch.bfloat16).requires_grad_(False)

    model = Quantized()
    assert restore_adapter_dtype(model, bf16=True) == 0
    assert model.adapter.weight.dtype == torch.bfloat16
    assert restore_adapter_dtype(model, bf16=False) == 2  # weight and bias
    assert model.adapter.weight.dtype == torch.float32 and model.adapter.bias.dtype == torch.float32
    assert model.frozen.weight.dtype == torch.bfloat16  # frozen weights keep their storage
    plain = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert not is_quantized(plain) and restore_adapter_dtype(plain, bf16=False) == 0
    assert plain.weight.dtype == torch.bfloat16

    class EightBit(torch.nn.Module):
        is_loaded_in_8bit = True

        def __init__(self) -> None:
            super().__init__()
            self.adapter = torch.nn.Linear(2, 2, bias=False).to(torch.bfloat16)

    assert is_quantized(EightBit()) and restore_adapter_dtype(EightBit(), bf16=False) == 1


# ------------------------------------------- the trainer ConfigMap of a planned DPO job


@pytest.mark.parametrize(
    ("example", "world", "stage"),
    [("lora-llama3-70b-zero3.yaml", 16, 3), ("qlora-llama3-8b-24gb.yaml", 1, None)],
)
def test_a_planned_dpo_jobs_config_map_is_what_the_trainer_accepts(
    tmp_path: Path, example: str, world: int, stage: int | None
) -> None:
    """The operator's own path (parse, plan, render the DeepSpeed config from the planned spec,
    the ConfigMap's YAML) into the trainer's loader, its batch check on the plan's world size
    and the DPO arguments; the ZeRO-3 config then through DeepSpeed's own parser, as
    `check_parsed` does in the pod."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from lora_contract import pod
    from lora_operator.api.loading import parse_lorajob
    from lora_operator.api.operator_config import OperatorConfig
    from lora_operator.controller.manifests import RunContext, build_config_map
    from lora_operator.deepspeed_config import deepspeed_config
    from lora_operator.memory import GpuCatalog, plan_job
    from lora_trainer.config import load_trainer_config
    from lora_trainer.deepspeed_setup import check_batch, zero_stage
    from lora_trainer.objectives import DPO_LOSS_PATH, objective_for

    job = yaml.safe_load((EXAMPLES / example).read_text())
    job["spec"]["method"] = "dpo"
    job["spec"]["dpo"] = {"beta": 0.2}
    job["spec"]["dataset"].pop("fields", None)
    spec = parse_lorajob(job, "test").spec
    plan = plan_job(spec, GpuCatalog.default()).to_status()
    operator = OperatorConfig.model_validate(
        {
            "trainerImage": "t:1",
            "s3": {"endpoint": "http://m:9000", "credentialsSecret": {"name": "s"}},
        }
    )
    ctx = RunContext(
        name=job["metadata"]["name"],
        namespace=job["metadata"]["namespace"],
        uid="u-1",
        run_id="r1",
        spec=spec,
        plan=plan,
        config=operator,
        output_uri="s3://b/p/ns/j/r1",
        deepspeed=deepspeed_config(plan.applied_to(spec), plan.strategy),
    )
    path = tmp_path / pod.CONFIG_FILE
    path.write_text(build_config_map(ctx)["data"][pod.CONFIG_FILE])
    config = load_trainer_config(path)
    assert config.spec.method.value == "dpo" and config.spec.dpo is not None
    assert config.spec.dpo.beta == 0.2
    assert zero_stage(config.deepspeed) == stage and plan.nodes * plan.gpus_per_node == world
    training = config.spec.training
    check_batch(config.deepspeed, training.micro_batch_size, training.gradient_accumulation, world)
    objective = objective_for(config)
    assert objective.loss_path("chunked") == DPO_LOSS_PATH
    shared = training_arguments(config, tmp_path / "out", False, False, 1)
    args = dpo_arguments(config, shared)
    assert (args.beta, args.max_length) == (0.2, spec.dataset.max_seq_length)
    if config.deepspeed is None:
        assert config.spec.quantization.mode.value == "nf4"
        return
    # what the Trainer fills from its arguments on `world` ranks, then DeepSpeed's parser
    from types import SimpleNamespace

    filled = HfTrainerDeepSpeedConfig(config.deepspeed)
    on_gpu = transformers.TrainingArguments(
        output_dir=str(tmp_path / "ds"),
        per_device_train_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation,
        max_grad_norm=training.max_grad_norm,
        bf16=True,
        use_cpu=True,
    )
    filled.trainer_config_process(on_gpu)
    filled.trainer_config_finalize(
        on_gpu, SimpleNamespace(config=SimpleNamespace(hidden_size=8192)), 10
    )
    parsed = DeepSpeedConfig(filled.config)
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_micro_batch_size_per_gpu == training.micro_batch_size


# ------------------------------------------------------------ on a GPU (pytest -m gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_qlora_dpo_under_zero3_trains_on_gpu(
    make_run: Any, store: S3Store, tmp_path: Path, dtype: str
) -> None:
    """The CUDA part of the paths above: NF4 under ZeRO-3 (one rank), DPO through TRL's fused
    log-prob head on lm_head's gathered weight, adapters bf16 (bf16) or fp32 (fp16: TRL's cast
    undone). Not run on the CPU machines this was written on."""
    from .test_zero3 import zero3_run

    spec = dpo_spec(write(tmp_path / "pref.jsonl", text_rows(32)))
    spec["resources"] = {"gpuType": "A100-80GB"}
    spec["quantization"] = {"mode": "nf4", "computeDtype": dtype}
    spec["training"].update(maxSteps=4, checkpointInterval=2, logInterval=1, microBatchSize=4)
    run = zero3_run(make_run, spec)
    result = run.run(module="lora_trainer.launch", extra_env={"NPROC_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "deepspeed ZeRO-3" in result.stderr and "; cuda" in result.stderr
    assert "loss trl-fused-logprobs" in result.stderr
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 4
    assert progress.reward_margin is not None
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
