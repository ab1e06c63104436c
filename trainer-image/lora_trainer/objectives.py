"""The one place that differs between training methods (`spec.method`): which datasets are
built, which training arguments and Trainer class run them, and which metrics are reported.
Everything else in `train.run_training` (S3, checkpoints, resume, progress, early stopping,
preemption, exit codes) is shared.

- sft: our completion-only examples, `PadCollator` and `LeanLossTrainer` (chunked loss).
- dpo: preference pairs (`preference_data.py`) through TRL's `DPOTrainer`, with the PEFT model
  and `ref_model=None`: TRL 1.16 adds a frozen `ref` adapter, a copy of the starting adapter
  (B = 0 for a fresh one: the base model), and computes the reference log-probs through it, so no
  second copy of the base model is loaded (under ZeRO-3 too: the copy is made before DeepSpeed
  partitions the parameters). TRL's collator pads the pairs; its fused LM head computes the
  per-token log-probs in chunks (gathering lm_head's weight under ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_contract.storage import S3Store
from lora_contract.types import DPOSpec, TrainerConfig, TrainingMethod

from .data import ListDataset, PadCollator, split_eval
from .errors import InvalidConfigError
from .metrics import ProgressReporter

Datasets = tuple[Any, Any | None]
DPO_LOSS_PATH = "trl-fused-logprobs"  # metrics.jsonl's loss_path of a DPO run


@dataclass(frozen=True)
class Objective:
    method: TrainingMethod
    datasets: Callable[[TrainerConfig, Any, S3Store, Path], Datasets]
    arguments: Callable[[TrainerConfig, Any], Any]  # the shared TrainingArguments -> its own
    trainer: Callable[..., Any]
    callbacks: Callable[[ProgressReporter], list[Any]]
    own_loss_path: str | None = None  # a method whose loss is not the SFT loss path (loss.py)

    def loss_path(self, chosen: str) -> str:
        """The loss path the run really takes, for the start-up log and metrics.jsonl: the SFT
        path train.py chose (chunked, plain), unless the method computes its loss itself."""
        return self.own_loss_path or chosen


# ------------------------------------------------------------------------------------ sft


def _sft_datasets(config: TrainerConfig, tokenizer: Any, store: S3Store, scratch: Path) -> Datasets:
    from .train import build_datasets

    return build_datasets(config, tokenizer, store, scratch)


def _sft_trainer(*, tokenizer: Any, **kwargs: Any) -> Any:
    from .loss import LeanLossTrainer

    return LeanLossTrainer(data_collator=PadCollator(tokenizer.pad_token_id), **kwargs)


# ------------------------------------------------------------------------------------ dpo


def dpo_settings(config: TrainerConfig) -> DPOSpec:
    return config.spec.dpo or DPOSpec()


def _dpo_datasets(config: TrainerConfig, tokenizer: Any, store: S3Store, scratch: Path) -> Datasets:
    from .preference_data import load_pairs
    from .train import data_path

    spec = config.spec
    data = spec.dataset
    pairs = load_pairs(
        data_path(data.source, "dataset.source", store, scratch),
        f"dataset.source {data.source}",
        spec,
        tokenizer,
    )
    if data.eval_source:
        train = pairs
        source = f"dataset.evalSource {data.eval_source}"
        path = data_path(data.eval_source, "dataset.evalSource", store, scratch)
        held = load_pairs(path, source, spec, tokenizer)
    else:
        train, held = split_eval(pairs, data.eval_split, spec.training.seed)
    if spec.training.early_stopping_patience is not None and not held:
        raise InvalidConfigError(
            "training.earlyStoppingPatience needs eval data, but the eval split is empty "
            f"({len(pairs)} rows x evalSplit {data.eval_split})"
        )
    return ListDataset(train), (ListDataset(held) if held else None)


def dpo_arguments(config: TrainerConfig, args: Any) -> Any:
    """The shared TrainingArguments as TRL's DPOConfig, plus the `dpo` section."""
    from trl.trainer.dpo_config import DPOConfig

    dpo = dpo_settings(config)
    values = args.to_dict()
    values.update(
        beta=dpo.beta,
        loss_type=[dpo.loss_type.value],
        max_length=config.spec.dataset.max_seq_length,
        label_names=[],  # a pair has no labels: TRL builds the completion mask itself
        hub_token=None,
        dataset_num_proc=None,
        # TRL's own offloading context (the one lora_trainer.offload uses for SFT), CUDA only
        activation_offloading=config.spec.training.activation_offloading and not args.use_cpu,
    )
    return DPOConfig(**values)


def _dpo_trainer(
    *,
    tokenizer: Any,
    train_dataset: ListDataset,
    eval_dataset: ListDataset | None,
    loss_path: Any = None,
    offload_path: Any = None,
    zero3: bool = False,
    **kwargs: Any,
) -> Any:
    """DPOTrainer over our pre-tokenized pairs (its own tokenizing pass is skipped)."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DPOTrainer

    class PreferenceTrainer(DPOTrainer):  # type: ignore[misc]
        def _prepare_dataset(self, dataset: Any, *args: Any, **kw: Any) -> Any:
            return dataset  # already prompt_ids / chosen_ids / rejected_ids (preference_data)

    def as_dataset(examples: ListDataset) -> Any:
        return Dataset.from_list(examples.examples)

    trainer = PreferenceTrainer(
        ref_model=None,
        processing_class=tokenizer,
        train_dataset=as_dataset(train_dataset),
        eval_dataset=as_dataset(eval_dataset) if eval_dataset is not None else None,
        **kwargs,
    )
    restore_adapter_dtype(trainer.model, bf16=bool(kwargs["args"].bf16))
    return trainer


def is_quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


def restore_adapter_dtype(model: Any, bf16: bool) -> int:
    """TRL 1.16's DPOTrainer casts a k-bit (QLoRA) model's trainable parameters to bf16, the QLoRA
    paper's choice, whatever the compute dtype. Under bf16 compute that stands; under fp16 (a T4
    has no bf16) or fp32 the adapters go back to fp32, as on the SFT path: fp16 mixed precision
    keeps fp32 master weights. Before the optimizer exists (it is built in `train`). Returns how
    many tensors were cast back."""
    import torch

    if bf16 or not is_quantized(model):
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
            cast += 1
    return cast


def preference_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """TRL's reward logs as our Progress field names (train, else eval)."""
    found: dict[str, float] = {}
    for ours, theirs in (
        ("reward_margin", "rewards/margins"),
        ("reward_accuracy", "rewards/accuracies"),
    ):
        for key in (theirs, f"eval_{theirs}"):
            if key in logs:
                found[ours] = round(float(logs[key]), 6)
                break
    return found


def _dpo_callbacks(reporter: ProgressReporter) -> list[Any]:
    from transformers import TrainerCallback

    class PreferenceProgress(TrainerCallback):  # type: ignore[misc]
        """After ProgressCallback: the reward margin and accuracy into progress.json and the
        step's metrics.jsonl record."""

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            found = preference_metrics(logs or {})
            if not state.is_world_process_zero or not found:
                return
            reporter.update(**found)
            reporter.amend_record(state.global_step, found)
            reporter.publish()

    return [PreferenceProgress()]


OBJECTIVES = {
    TrainingMethod.sft: Objective(
        TrainingMethod.sft,
        datasets=_sft_datasets,
        arguments=lambda config, args: args,
        trainer=_sft_trainer,
        callbacks=lambda reporter: [],
    ),
    TrainingMethod.dpo: Objective(
        TrainingMethod.dpo,
        datasets=_dpo_datasets,
        arguments=dpo_arguments,
        trainer=_dpo_trainer,
        callbacks=_dpo_callbacks,
        own_loss_path=DPO_LOSS_PATH,  # TRL's loss over its fused log-probs, not ours
    ),
}


def objective_for(config: TrainerConfig) -> Objective:
    return OBJECTIVES[config.spec.method]
