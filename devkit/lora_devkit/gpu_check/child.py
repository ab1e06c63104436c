"""What runs in the fresh child processes: probing the device, building a random-init model
directory from a shipped config, and one calibration case through the trainer's own code.

`python -m lora_devkit.gpu_check.child {probe|build|case} ...` writes one JSON document to
--result; the parent reads only that file (the child's output is its log).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from .cases import CPU_GPU_TYPE, Case, case_spec

GIB = 1024**3
VERSIONED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def probe() -> dict[str, Any]:
    """The device this run measures on, and the package versions it measures."""
    import torch

    info: dict[str, Any] = {"cuda": bool(torch.cuda.is_available()), "versions": versions()}
    if info["cuda"]:
        _free, total = torch.cuda.mem_get_info()
        info.update(device=torch.cuda.get_device_name(0), total_gib=round(total / GIB, 2))
    try:
        import bitsandbytes  # noqa: F401

        info["bitsandbytes_imports"] = True
    except Exception as exc:  # a broken CUDA build raises more than ImportError
        info["bitsandbytes_imports"] = False
        info["bitsandbytes_error"] = str(exc)[:300]
    return info


def build_model(config_path: Path, dest: Path, device: str) -> dict[str, Any]:
    """A from_pretrained-able directory of random bf16 weights for `config_path` (initialised
    on `device`: an 8B model initialises in seconds on a GPU, minutes on a CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(config_path.read_text())
    config = AutoConfig.from_pretrained(str(dest))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(dest))
    params = sum(p.numel() for p in model.parameters())
    return {"status": "built", "params": params}


def synthetic_examples(count: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, Any]]:
    """`count` rows of exactly `seq_len` random tokens, every position labelled (the loss's
    worst case); ids avoid the first few, where pad/bos/eos usually sit."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        ids = [rng.randrange(3, vocab) for _ in range(seq_len)]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def _step_clock(on_cuda: bool) -> Any:
    """An HF callback noting when each optimizer step ends (the GPU synchronised first)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if on_cuda:
                import torch

                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepClock()


def _memory(torch: Any, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        f"{prefix}_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
    }


def run_case(case: Case, model_dir: Path, scratch: Path, on_cuda: bool) -> dict[str, Any]:
    """Load (and quantize) the model, add LoRA, and train `case.steps` steps with the trainer's
    own functions: load_base_model, apply_lora, choose_loss_path, training_arguments and the
    LeanLossTrainer. No S3, no checkpoints: only what runs on the GPU."""
    import torch

    from lora_contract.types import TrainerConfig
    from lora_trainer.data import ListDataset, PadCollator
    from lora_trainer.loss import LeanLossTrainer, choose_loss_path
    from lora_trainer.model import apply_lora, load_base_model
    from lora_trainer.train import training_arguments

    spec = case_spec(case, "H200-141GB" if on_cuda else CPU_GPU_TYPE)
    config = TrainerConfig(
        job_name="gpu-check", run_id=case.id, output_uri=f"s3://gpu-check/{case.id}", spec=spec
    )
    record: dict[str, Any] = {"phase": "load"}
    started = time.perf_counter()
    try:
        model = apply_lora(load_base_model(model_dir, spec, local_rank=0), spec)
        record["load_s"] = round(time.perf_counter() - started, 1)
        if on_cuda:
            record.update(_memory(torch, "load_peak"))
            torch.cuda.reset_peak_memory_stats()
        record["phase"] = "train"
        loss_path = choose_loss_path(model, spec.training.chunked_loss)
        record["loss_path"] = loss_path.value
        text_config = model.config.get_text_config()
        pad = getattr(text_config, "pad_token_id", None)
        rows = synthetic_examples(
            case.steps * case.micro_batch, case.seq_len, text_config.vocab_size, seed=0
        )
        clock = _step_clock(on_cuda)
        trainer = LeanLossTrainer(
            loss_path=loss_path,
            model=model,
            args=training_arguments(config, scratch / "output", False, on_cuda, 1),
            train_dataset=ListDataset(rows),
            data_collator=PadCollator(pad if isinstance(pad, int) else 0),
            callbacks=[clock],
        )
        train_started = time.perf_counter()
        trainer.train()
    except torch.OutOfMemoryError as exc:
        record.update(status="oom", reason=str(exc).splitlines()[0][:300])
    else:
        del record["phase"]  # kept only for an out-of-memory: where it happened
        record["status"] = "measured"
        ends = [train_started, *clock.ends]
        steady = [b - a for a, b in itertools.pairwise(ends[1:])] or [ends[-1] - ends[0]]
        record["step_s"] = round(sum(steady) / len(steady), 3)
        record["tokens_per_s"] = round(case.seq_len * case.micro_batch / record["step_s"], 1)
    if on_cuda:
        record.update(_memory(torch, "train_peak"))
        free, total = torch.cuda.mem_get_info()
        record["device_total_gib"] = round(total / GIB, 2)
        record["device_used_end_gib"] = round((total - free) / GIB, 2)
        record["peak_allocated_gib"] = max(
            record.get("load_peak_allocated_gib", 0.0), record["train_peak_allocated_gib"]
        )
        record["peak_reserved_gib"] = max(
            record.get("load_peak_reserved_gib", 0.0), record["train_peak_reserved_gib"]
        )
    else:
        import resource

        record["host_peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3
        )
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_devkit.gpu_check.child")
    parser.add_argument("what", choices=["probe", "build", "case"])
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--case", help="the case as JSON (case)")
    parser.add_argument("--config", type=Path, help="shipped config.json (build)")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if args.what == "probe":
            result = probe()
        elif args.what == "build":
            result = build_model(args.config, args.model_dir, args.device)
        else:
            case = Case.from_dict(json.loads(args.case))
            result = run_case(case, args.model_dir, args.scratch, args.device == "cuda")
    except Exception as exc:  # the parent records it as this case's error and carries on
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    args.result.write_text(json.dumps(result))
    return 0 if result.get("status") != "error" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
