"""Serving-plan accuracy: memory/serving_plan.py's terms against published vLLM memory figures.

Each row is one published number with its source, and the same quantity from our serving
terms. Weights and KV cache are arithmetic on the config (the goal: within 5%); the runtime
overhead row compares our constants with another planner's estimate and is shown, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_operator.memory import load_architecture
from lora_operator.memory.serving_plan import (
    ServingKnobs,
    kv_bytes_per_token,
    memory_terms,
    weight_bytes,
)

from .goals import record

GIB = 1024**3
GB = 1e9
TARGET_ERROR = 0.05
LLAMA_8B = "meta-llama/Llama-3.1-8B"
LLAMA_70B = "meta-llama/Llama-3.1-70B"  # Llama 3.3 70B has the same shape
KVPLAN = "https://pypi.org/project/kvplan/0.1.1/"
NIM = "https://docs.nvidia.com/nim/large-language-models/latest/troubleshooting/memory.html"
SPHERON = "https://www.spheron.network/blog/kv-cache-optimization-guide"
LLAMA_1B = "meta-llama/Llama-3.2-1B"  # Llama-3.2-1B-Instruct has the same shape
# vLLM's "Loading model weights took X GB" for Llama-3.2-1B-Instruct in 16-bit and from the
# bitsandbytes 4-bit checkpoint unsloth/Llama-3.2-1B-Instruct-bnb-4bit; vLLM divides by 2**30.
OUMI_BNB = "https://github.com/oumi-ai/oumi/pull/1223"


@dataclass(frozen=True)
class Row:
    id: str
    source: str
    what: str
    published: float
    ours: float
    unit: str
    judged: bool = True

    @property
    def error(self) -> float:
        return self.ours / self.published - 1


def rows() -> list[Row]:
    small, large = load_architecture(LLAMA_8B, None), load_architecture(LLAMA_70B, None)
    tiny = load_architecture(LLAMA_1B, None)
    # kvplan's L4 run: max_model_len 131072, max_num_seqs 256 (its defaults for the model)
    l4 = memory_terms(small, ServingKnobs(131072, 256, 1, 16), tp=1)
    runtime = l4["activations"] + l4["cuda_graphs"] + l4["runtime_other"]
    return [
        Row(
            "llama-3.1-8b-weights-bf16",
            KVPLAN,
            "weights, from the weight files",
            14.96,
            weight_bytes(small, 16) / GIB,
            "GiB",
        ),
        Row(
            "llama-3.1-8b-kv-per-token",
            KVPLAN,
            "KV cache bytes per token (fp16)",
            131072,
            kv_bytes_per_token(small),
            "B",
        ),
        Row(
            "llama-3.1-8b-weights-tp1",
            NIM,
            "BF16 weights per GPU, TP 1",
            16,
            weight_bytes(small, 16) / GB,
            "GB",
        ),
        Row(
            "llama-3.3-70b-weights-tp4",
            NIM,
            "BF16 weights per GPU, TP 4",
            35,
            weight_bytes(large, 16) / 4 / GB,
            "GB",
        ),
        Row(
            "llama-3.1-70b-kv-4k-x8",
            SPHERON,
            "BF16 KV cache, 4,096 tokens x 8 users",
            10.7,
            kv_bytes_per_token(large) * 4096 * 8 / GB,
            "GB",
        ),
        Row(
            "llama-3.2-1b-weights-bf16",
            OUMI_BNB,
            "weights vLLM loaded, 16-bit",
            2.3185,
            weight_bytes(tiny, 16) / GIB,
            "GiB",
        ),
        Row(
            "llama-3.2-1b-weights-bnb4",
            OUMI_BNB,
            "weights vLLM loaded, bitsandbytes 4-bit (serving.quantization nf4)",
            0.9786,
            weight_bytes(tiny, 4) / GIB,
            "GiB",
        ),
        Row(
            "llama-3.1-8b-runtime-l4",
            KVPLAN,
            "runtime (activations, compile, graphs, other): an estimate",
            0.83,
            runtime,
            "GiB",
            judged=False,
        ),
    ]


def main() -> int:
    table = rows()
    header = f"{'case':<28}{'published':>12}{'ours':>12}{'error':>8}  unit  what (source)"
    print(header)
    print("-" * len(header))
    for row in table:
        mark = "" if row.judged else " (not judged)"
        print(
            f"{row.id:<28}{row.published:>12,.2f}{row.ours:>12,.2f}{row.error:>+8.1%}  "
            f"{row.unit:<5} {row.what}{mark} ({row.source})"
        )
    judged = [row for row in table if row.judged]
    worst = max(abs(row.error) for row in judged)
    record(
        "serving memory",
        f"weights and KV within ±{TARGET_ERROR:.0%} of published figures",
        f"worst {worst:.1%} over {len(judged)} figures",
        worst <= TARGET_ERROR,
    )
    return 0
