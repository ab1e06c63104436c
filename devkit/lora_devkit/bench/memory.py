"""Memory-model accuracy: our estimate against published measured peaks (`make bench`).

Cases live in `memory_cases.yaml` (source, settings, measured GB and which peak). For each case
we print our estimate of the same peak, the error, and what `accelerate estimate-memory`
reports as the model's size in the case's dtype, computed by accelerate's own code (its Hub
look-up replaced by the case's config.json): weights only, no LoRA, no activations.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from lora_contract.types import QuantizationMode
from lora_operator.memory import Assumptions, TrainingShape, estimate_memory, load_architecture
from lora_operator.memory.local_config import read_config

from .goals import record

BENCH_DIR = Path(__file__).parent
CASES_PATH = BENCH_DIR / "memory_cases.yaml"
GIB = 1024**3
TARGET_ERROR = 0.10
TARGET_SHARE = 0.80

# What each trainer does differently from our defaults (HF Trainer + PEFT under autocast).
TRAINER_ASSUMPTIONS = {
    # bf16-true: adapters and Adam moments in bf16; norms stay bf16; activations run as single
    # kernels (F.gelu). Its "chunked" cross-entropy runs lm_head per 128 positions but keeps
    # every chunk's bf16 logits (the list stays referenced through backward) and each chunk's
    # bf16 log-softmax: 4 bytes per logit (litgpt/utils.py chunked_cross_entropy, April 2024).
    # Its config-hub runs pinned bitsandbytes 0.41/0.42 (pyproject.toml, March-July 2024),
    # whose 4-bit matmul kept its input for backward.
    "litgpt": Assumptions(
        adapter_bytes=2.0,
        kbit_upcast_bytes=2.0,
        logits_bytes_per_element=4.0,
        fused_activations=True,
        kbit_saves_input=True,
    ),
    # PEFT's published QLoRA runs go through prepare_model_for_kbit_training (fp32 non-quantized
    # parameters) and the model's own unchunked loss; our trainer does neither any more.
    "hf-peft": Assumptions(kbit_upcast_bytes=4.0),
    # PEFT on a bf16 model with bf16 adapters (autocast_adapter_dtype=False) and no
    # prepare_model_for_kbit_training; torchtune's single-device LoRA recipe: the same dtypes.
    "peft-bf16-adapters": Assumptions(adapter_bytes=2.0, kbit_upcast_bytes=2.0),
    "torchtune": Assumptions(adapter_bytes=2.0, kbit_upcast_bytes=2.0),
    # PEFT's MetaMathQA method comparison (method_comparison/MetaMathQA/run.py): a bf16 model,
    # PEFT's fp32 adapters (autocast_adapter_dtype=True) and use_amp=False, so the adapters run
    # outside autocast: DoRA's adapter output and weight copies are fp32 (memory/dora.py).
    "peft-metamathqa": Assumptions(adapter_autocast=False),
    # lora-operator's own trainer (rows written by `make gpu-check`): the plan's assumptions.
    "lora-operator": Assumptions(),
}
# Cases measured on the operator's own code path: HF transformers + PEFT (+ bitsandbytes).
OWN_STACK = frozenset({"hf-peft", "peft-bf16-adapters", "peft-metamathqa", "lora-operator"})
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


# accelerate estimate-memory's dtype names for the size a case's base weights are loaded in.
ACCELERATE_DTYPES = {
    QuantizationMode.none: "float16",  # 2 bytes per parameter, as bf16
    QuantizationMode.nf4: "int4",
    QuantizationMode.int8: "int8",
}


@functools.cache
def accelerate_total_gb(config_json: str, dtype: str) -> float:
    """`accelerate estimate-memory`'s "Total Size" for this config and dtype, from accelerate's
    own `gather_data` (empty model on the meta device). Its only network step, the Hub look-up,
    is replaced by the local config.json: this machine has no Hub access."""
    from accelerate.commands import estimate

    hub_info = SimpleNamespace(config={}, library_name="transformers")
    original = estimate.verify_on_hub
    with tempfile.TemporaryDirectory(prefix="bench-accelerate-") as tmp:
        (Path(tmp) / "config.json").write_text(config_json)
        args = SimpleNamespace(
            model_name=tmp, library_name="transformers", trust_remote_code=False, dtypes=[dtype]
        )
        estimate.verify_on_hub = lambda repo, token=None: hub_info
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                rows = estimate.gather_data(args)
        finally:
            estimate.verify_on_hub = original
    return float(rows[0][2]) / 1e9


def accelerate_case(case: dict[str, Any]) -> float:
    config = read_config(case["model"], config_ref(case)).data
    dtype = ACCELERATE_DTYPES[QuantizationMode(case["quantization"])]
    return accelerate_total_gb(json.dumps(config, sort_keys=True), dtype)


def estimate_case(case: dict[str, Any]) -> tuple[float, float]:
    """(our estimate in GB, the 16-bit weights in GB) for one case."""
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
        chunked_loss=case.get("chunked_loss", False),  # the trainer's training.chunkedLoss
        use_dora=case.get("use_dora", False),
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
    errors: dict[str, float] = {}
    for case in cases:
        ours, _ = estimate_case(case)
        errors[case["id"]] = error = ours / case["measured_gb"] - 1
        print(
            f"{case['id']:<{width}}{case['measured_gb']:>12.2f}{ours:>9.2f}{error:>+8.1%}"
            f"{accelerate_case(case):>15.2f}"
        )
    print(
        "\naccelerate column: `accelerate estimate-memory`'s Total Size for the case's dtype "
        "(float16/int8/int4), from accelerate's own code: weights only, no LoRA, optimizer "
        "states or activations."
    )
    record_goals(cases, errors)
    return 0


def record_goals(cases: list[dict[str, Any]], errors: dict[str, float]) -> None:
    """The memory model's goals: most published cases within ±10%, and no case measured on the
    operator's own stack (HF Trainer + PEFT) under-estimated by more than 10% (an OOM)."""
    within = sum(abs(e) <= TARGET_ERROR for e in errors.values())
    share = within / len(cases)
    record(
        "memory model",
        f">= {TARGET_SHARE:.0%} of published cases within ±{TARGET_ERROR:.0%}",
        f"{within}/{len(cases)} ({share:.0%})",
        share >= TARGET_SHARE,
    )
    own = [c["id"] for c in cases if c["trainer"] in OWN_STACK]
    under = [i for i in own if errors[i] < -TARGET_ERROR]
    record(
        "memory model",
        f"no case of the operator's own stack (HF + PEFT) more than {TARGET_ERROR:.0%} under",
        f"{len(under)} of {len(own)} under" + (f": {', '.join(under)}" if under else ""),
        not under,
    )
