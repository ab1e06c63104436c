"""Memory-model accuracy: our estimate against published measured peaks (`make bench`).

Cases live in `memory_cases.yaml` (source, settings, measured GB and which peak). For each case
we print our estimate of the same peak, the error, and what `accelerate estimate-memory`
would say (it counts the weights on the meta device only: no LoRA, no activations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..api.types import QuantizationMode
from ..memory import Assumptions, TrainingShape, estimate_memory, load_architecture

CASES_PATH = Path(__file__).with_name("memory_cases.yaml")
GIB = 1024**3
TARGET_ERROR = 0.10
TARGET_SHARE = 0.80

# What each trainer does differently from our defaults (HF Trainer + PEFT under autocast).
TRAINER_ASSUMPTIONS = {
    # bf16-true: adapters and Adam moments in bf16; chunked cross-entropy; norms stay bf16.
    "litgpt": Assumptions(adapter_bytes=2.0, kbit_upcast_bytes=2.0, chunked_loss=True),
    "hf-peft": Assumptions(),
}
# LitGPT materialises the 16-bit checkpoint on the GPU before quantizing it, so its QLoRA
# max_memory_allocated is set while loading, not while training.
QUANTIZES_AFTER_LOADING = {"litgpt"}


def load_cases(path: Path = CASES_PATH) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    return cases


def estimate_case(case: dict[str, Any]) -> tuple[float, float]:
    """(our estimate in GB, accelerate-style weights-only estimate in GB) for one case."""
    arch = load_architecture(case["model"], case.get("config"))
    shape = TrainingShape(
        quantization=QuantizationMode(case["quantization"]),
        double_quant=case.get("double_quant", True),
        rank=case["rank"],
        target_modules=tuple(case["targets"]),
        dropout=case["dropout"],
        seq_len=case["seq_len"],
        micro_batch=case["micro_batch"],
        gradient_checkpointing=case["checkpointing"],
    )
    trainer = case["trainer"]
    estimate = estimate_memory(arch, shape, TRAINER_ASSUMPTIONS[trainer])
    if case["peak"] == "max_memory_allocated":
        gib = estimate.peak_allocated_gib
    else:  # nvidia-smi / reserved: include allocator slack and the CUDA context
        gib = estimate.peak_gib
    sixteen_bit = arch.total_params * 2 / GIB
    if trainer in QUANTIZES_AFTER_LOADING and shape.quantization != QuantizationMode.none:
        gib = max(gib, sixteen_bit)
    return gib * GIB / 1e9, sixteen_bit * GIB / 1e9


def main() -> int:
    cases = load_cases()
    header = f"{'case':<28}{'measured GB':>12}{'ours GB':>9}{'error':>8}{'accelerate GB':>15}"
    print(header)
    print("-" * len(header))
    within = 0
    for case in cases:
        ours, accelerate = estimate_case(case)
        error = ours / case["measured_gb"] - 1
        within += abs(error) <= TARGET_ERROR
        print(
            f"{case['id']:<28}{case['measured_gb']:>12.2f}{ours:>9.2f}{error:>+8.1%}"
            f"{accelerate:>15.2f}"
        )
    share = within / len(cases)
    verdict = "meets" if share >= TARGET_SHARE else "BELOW"
    print(
        f"\n{within}/{len(cases)} cases within ±{TARGET_ERROR:.0%} ({share:.0%}); {verdict} the "
        f"{TARGET_SHARE:.0%} target. accelerate column: weights only (bf16), as "
        "`accelerate estimate-memory` reports for loading; it ignores LoRA, optimizer states "
        "and activations."
    )
    return 0
