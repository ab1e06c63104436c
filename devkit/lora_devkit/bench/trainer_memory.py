"""The trainer's own memory on CPU-measurable terms: what one training step keeps for backward
and adds at its peak, before and after the lean-trainer techniques, each technique's share shown.

Two techniques, each measured where a CPU can run it, each configuration in a fresh process:
- the chunked loss (`lora_trainer.loss`) against the model's own loss over full logits, on a
  Llama-shaped model with a 128k vocabulary at 2 x 2048, in fp32 as the trainer runs on a CPU
  (this CPU's bf16 matmuls run at a fraction of a GFLOP/s: a bf16 128k-vocabulary step would take
  hours); the goal is judged here: the peak at least 40% below today's;
- QLoRA without peft's fp32 upcast (`lora_trainer.model.prepare_quantized_model`) against
  `prepare_model_for_kbit_training`, NF4 under bf16 autocast as on a GPU, on the 4k-vocabulary
  Llama of tests/memory/test_saved_tensors.py at 2 x 256 (the upcast's share is per token and
  layer, so a small model shows it);
and the plan's figures for Llama-3.1-8B QLoRA at 2 x 2048 for scale. Gradient checkpointing on.

Measured with the kernel's own accounting: glibc is told to mmap every allocation above 64 KiB
(`MALLOC_MMAP_THRESHOLD_`), so a freed tensor leaves the resident set at once; the peak resident
set (VmHWM, reset through /proc/self/clear_refs) during forward + backward, less the resident set
just before it, is the step's peak; the resident set after the forward, less the same baseline,
is what the forward saved for backward.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .goals import record

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 448,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "vocab_size": 128_256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
SMALL_LLAMA: dict[str, Any] = {  # tests/memory/test_saved_tensors.py's model
    **LLAMA,
    "hidden_size": 512,
    "intermediate_size": 1792,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
}
MODELS = {"llama-128k": (LLAMA, 2, 2048), "llama-4k": (SMALL_LLAMA, 2, 256)}  # config, b, s
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GOAL_REDUCTION = 0.40
MIB = 2**20


@dataclass(frozen=True)
class Config:
    model: str
    quantized: bool
    upcast: bool  # peft's prepare_model_for_kbit_training
    chunked: bool
    bf16: bool  # bf16 weights under bf16 autocast (the GPU's dtypes); else fp32 (the CPU's)


CONFIGS = {
    "lora fp32, stock loss (today)": Config("llama-128k", False, False, False, False),
    "lora fp32, chunked loss": Config("llama-128k", False, False, True, False),
    "qlora bf16, fp32 upcast (today)": Config("llama-4k", True, True, True, True),
    "qlora bf16, no upcast": Config("llama-4k", True, False, True, True),
}
STEPS = {
    "chunked loss": ("lora fp32, stock loss (today)", "lora fp32, chunked loss"),
    "no fp32 upcast": ("qlora bf16, fp32 upcast (today)", "qlora bf16, no upcast"),
}


@dataclass(frozen=True)
class Measure:
    saved_mib: float  # resident after the forward: kept for backward (+ the loss scalar)
    peak_mib: float  # peak resident during forward + backward
    frozen_weights_mib: float  # every non-adapter parameter's bytes (not a CPU peak term)


def _proc_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def build_model(checkpoint: Path, config: Config) -> Any:
    """The PEFT model the way the trainer (or, with `upcast`, yesterday's trainer) builds it."""
    import peft
    import torch
    import transformers

    from lora_trainer.model import prepare_quantized_model

    dtype = torch.bfloat16 if config.bf16 else torch.float32
    options: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if config.quantized:
        options["quantization_config"] = transformers.BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, **options)
    if config.quantized and config.upcast:
        model = peft.prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )
    elif config.quantized:
        model = prepare_quantized_model(model)
    model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGETS), lora_dropout=0.0)
    peft_model = peft.get_peft_model(model, lora)
    peft_model.enable_input_require_grads()
    return peft_model


def training_step(model: Any, ids: Any, config: Config) -> Any:
    """Forward (the loss as LeanLossTrainer computes it, or the stock one); returns the loss."""
    import torch

    from lora_trainer.loss import LossPath, lean_forward_loss

    path = LossPath.chunked if config.chunked else LossPath.standard
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        return lean_forward_loss(model, ids, ids, path)


def measure_one(checkpoint: Path, name: str) -> Measure:
    """One configuration in this process (run by `main` in a child process)."""
    import torch

    config = CONFIGS[name]
    model = build_model(checkpoint, config)
    model.train()
    frozen = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n
    )
    fields, batch, seq = MODELS[config.model]
    vocab = int(fields["vocab_size"])
    warm = torch.randint(0, vocab, (batch, 16), generator=torch.Generator().manual_seed(1))
    training_step(model, warm, config).backward()  # kernels' one-off set-up, outside the window
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    baseline = _proc_bytes("VmRSS")
    _reset_peak()
    loss = training_step(model, ids, config)
    saved = _proc_bytes("VmRSS") - baseline
    loss.backward()
    peak = _proc_bytes("VmHWM") - baseline
    return Measure(saved / MIB, peak / MIB, frozen / MIB)


def save_checkpoint(path: Path, fields: dict[str, Any]) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: v for k, v in fields.items() if k != "model_type"})
    model: Any = transformers.LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(path)
    return path


def run_child(checkpoint: Path, name: str) -> Measure:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, "-m", "lora_devkit.bench.trainer_memory", str(checkpoint), name]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return Measure(**json.loads(done.stdout.strip().splitlines()[-1]))


def modelled_8b() -> dict[str, float]:
    """The plan's activation + dropout + loss terms (GiB) for Llama-3.1-8B QLoRA at 2 x 2048:
    today's trainer (fp32 upcast, full logits), without the upcast, and the lean one."""
    from lora_contract.types import QuantizationMode
    from lora_operator.memory import Assumptions, TrainingShape, estimate_memory, load_architecture

    arch = load_architecture("meta-llama/Llama-3.1-8B", None)
    today = TrainingShape(quantization=QuantizationMode.nf4, seq_len=2048, micro_batch=2)
    lean = TrainingShape(
        quantization=QuantizationMode.nf4, seq_len=2048, micro_batch=2, chunked_loss=True
    )
    result = {}
    for name, shape, assumptions in (
        ("today", today, Assumptions(kbit_upcast_bytes=4.0)),
        ("no upcast", today, Assumptions()),
        ("no upcast + chunked loss", lean, Assumptions()),
    ):
        terms = estimate_memory(arch, shape, assumptions).breakdown_gib
        result[name] = sum(terms[t] for t in ("activations", "lora_dropout", "logits"))
        result[f"{name} weights"] = terms["weights"]
    return result


def print_table(results: dict[str, Measure]) -> bool:
    """Prints every configuration and each technique's share; returns whether the goal is met."""
    for model, (fields, batch, seq) in MODELS.items():
        print(
            f"{model}: Llama-shaped, vocab {fields['vocab_size']:,}, hidden "
            f"{fields['hidden_size']}, {fields['num_hidden_layers']} layers, {batch} x {seq}"
        )
    print(f"{'configuration':<34} {'saved MiB':>10} {'peak MiB':>10} {'frozen weights MiB':>19}")
    for name, m in results.items():
        print(f"{name:<34} {m.saved_mib:>10.0f} {m.peak_mib:>10.0f} {m.frozen_weights_mib:>19.0f}")
    met = True
    for technique, (before_name, after_name) in STEPS.items():
        before, after = results[before_name], results[after_name]
        cut = 1 - after.peak_mib / before.peak_mib
        print(
            f"{technique}: peak {before.peak_mib:.0f} -> {after.peak_mib:.0f} MiB (-{cut:.0%}); "
            f"saved {before.saved_mib:.0f} -> {after.saved_mib:.0f} MiB; frozen weights "
            f"{before.frozen_weights_mib:.0f} -> {after.frozen_weights_mib:.0f} MiB"
        )
        if technique == "chunked loss":
            met = cut >= GOAL_REDUCTION
            record(
                "trainer memory",
                "peak (saved activations + loss buffers), 128k vocab at 2 x 2048: >= 40% below "
                "today's",
                f"-{cut:.0%} ({before.peak_mib:.0f} -> {after.peak_mib:.0f} MiB)",
                met,
            )
    plan = modelled_8b()
    print(
        "the plan, Llama-3.1-8B QLoRA at 2 x 2048 (activations + dropout copies + loss; weights):"
    )
    for name in ("today", "no upcast", "no upcast + chunked loss"):
        print(f"  {name:<26} {plan[name]:6.2f} GiB; weights {plan[name + ' weights']:.2f} GiB")
    return met


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-trainer-memory-") as tmp:
        checkpoints = {
            model: save_checkpoint(Path(tmp) / model, fields)
            for model, (fields, _, _) in MODELS.items()
        }
        results = {name: run_child(checkpoints[c.model], name) for name, c in CONFIGS.items()}
    print_table(results)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3:
        result = measure_one(Path(sys.argv[1]), sys.argv[2])
        print(json.dumps(result.__dict__))
        sys.exit(0)
    sys.exit(main())
