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

BENCH_DIR = Path(__file__).parent
CASES_PATH = BENCH_DIR / "memory_cases.yaml"
GIB = 1024**3
TARGET_ERROR = 0.10
TARGET_SHARE = 0.80

# What each trainer does differently from our defaults (HF Trainer + PEFT under autocast).
TRAINER_ASSUMPTIONS = {
    # bf16-true: adapters and Adam moments in bf16; chunked cross-entropy; norms stay bf16;
    # activations run as single kernels (F.gelu).
    "litgpt": Assumptions(
        adapter_bytes=2.0, kbit_upcast_bytes=2.0, chunked_loss=True, fused_activations=True
    ),
    "hf-peft": Assumptions(),
    # PEFT on a bf16 model with bf16 adapters (autocast_adapter_dtype=False) and no
    # prepare_model_for_kbit_training; torchtune's single-device LoRA recipe: the same dtypes.
    "peft-bf16-adapters": Assumptions(adapter_bytes=2.0, kbit_upcast_bytes=2.0),
    "torchtune": Assumptions(adapter_bytes=2.0, kbit_upcast_bytes=2.0),
}
# LitGPT materialises the 16-bit checkpoint on the GPU before quantizing it, so its QLoRA
# max_memory_allocated is set while loading, not while training.
QUANTIZES_AFTER_LOADING = {"litgpt"}


def config_ref(case: dict[str, Any]) -> str | None:
    """A case's `config`: URLs and absolute paths as given, relative paths against this folder
    (bench-only config.json files live in `bench/configs/`), so any working directory works."""
    ref: str | None = case.get("config")
    if not ref or ref.startswith(("http://", "https://")) or Path(ref).is_absolute():
        return ref
    return str(BENCH_DIR / ref)


def load_cases(path: Path = CASES_PATH) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    return cases


def estimate_case(case: dict[str, Any]) -> tuple[float, float]:
    """(our estimate in GB, accelerate-style weights-only estimate in GB) for one case."""
    arch = load_architecture(case["model"], config_ref(case))
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
    assumptions = TRAINER_ASSUMPTIONS[trainer]
    estimate = estimate_memory(arch, shape, assumptions)
    if case["peak"] == "max_memory_allocated":
        gib = estimate.peak_allocated_gib
    elif case["peak"] == "max_memory_reserved":  # the caching allocator's slack, no context
        gib = estimate.peak_allocated_gib * (1 + assumptions.allocator_overhead_fraction)
    else:  # nvidia-smi: allocator slack and the CUDA context
        gib = estimate.peak_gib
    sixteen_bit = arch.total_params * 2 / GIB
    if trainer in QUANTIZES_AFTER_LOADING and shape.quantization != QuantizationMode.none:
        gib = max(gib, sixteen_bit)
    return gib * GIB / 1e9, sixteen_bit * GIB / 1e9


def main() -> int:
    cases = load_cases()
    width = max(28, *(len(case["id"]) + 2 for case in cases))
    header = f"{'case':<{width}}{'measured GB':>12}{'ours GB':>9}{'error':>8}{'accelerate GB':>15}"
    print(header)
    print("-" * len(header))
    within = 0
    for case in cases:
        ours, accelerate = estimate_case(case)
        error = ours / case["measured_gb"] - 1
        within += abs(error) <= TARGET_ERROR
        print(
            f"{case['id']:<{width}}{case['measured_gb']:>12.2f}{ours:>9.2f}{error:>+8.1%}"
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
