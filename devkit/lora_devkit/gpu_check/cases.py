"""The calibration cases (model x method x sequence length x micro batch), their order, and the
LoRAJobSpec each one trains and is planned with."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lora_contract.types import LoRAJobSpec

# Shipped config stem -> the model id a user writes (spec.baseModel.name), in priority order:
# the flagship 8B first (the QLoRA under-estimate), a cheap 1B with a 128k vocabulary
# (the loss term), then two other 7B families (152k and 32k vocabularies).
DEFAULT_MODELS = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "mistral-7b-v0.3": "mistralai/Mistral-7B-v0.3",
}
TINY_MODEL = {"tiny-llama": "lora-operator/tiny-llama"}
METHODS = ("qlora", "lora")  # QLoRA first: that is where the plan was furthest off
SEQ_LENS = (512, 2048, 4096)
MICRO_BATCHES = (1, 2)
ANCHOR = (2048, 1)  # the shape every model gets before any model gets a second one
EXTREMES = ((4096, 2), (512, 1))  # the largest and smallest activations: the slope
STEPS = 3
CPU_GPU_TYPE = "cpu"
DEFAULT_GPU_TYPE = "H200-141GB"


@dataclass(frozen=True)
class Case:
    """One measurement: the trainer's defaults (LoRA r16 on q/k/v/o, dropout 0.05, gradient
    checkpointing, chunked loss, SDPA, AdamW) at this model, method and shape."""

    model: str  # shipped config stem, e.g. llama-3.1-8b
    model_id: str  # spec.baseModel.name
    method: str  # "lora" (bf16 base) or "qlora" (nf4 base, double quant)
    seq_len: int
    micro_batch: int
    steps: int = STEPS

    @property
    def id(self) -> str:
        return f"{self.model}-{self.method}-s{self.seq_len}-b{self.micro_batch}"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.seq_len, self.micro_batch)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        fields = ("model", "model_id", "method", "seq_len", "micro_batch", "steps")
        return cls(**{k: data[k] for k in fields})


def grid(
    models: dict[str, str], methods: tuple[str, ...], shapes: list[tuple[int, int]]
) -> list[Case]:
    return [
        Case(stem, model_id, method, seq, batch)
        for stem, model_id in models.items()
        for method in methods
        for seq, batch in shapes
    ]


def default_cases() -> list[Case]:
    shapes = [(seq, batch) for seq in SEQ_LENS for batch in MICRO_BATCHES]
    return order_cases(grid(DEFAULT_MODELS, METHODS, shapes), list(DEFAULT_MODELS))


def quick_cases(device: str) -> list[Case]:
    """A smoke run: the 2-layer tiny Llama (LoRA only on CPU: bitsandbytes needs CUDA), plus the
    1B model's anchor shape on a GPU."""
    methods = METHODS if device == "cuda" else ("lora",)
    cases = grid(TINY_MODEL, methods, [(128, 1)])
    if device == "cuda":
        cases += grid({"llama-3.2-1b": DEFAULT_MODELS["llama-3.2-1b"]}, METHODS, [ANCHOR])
    return cases


def tier(case: Case, models: list[str]) -> int:
    """Lower runs earlier. Building a model costs about as much as two of its cases, so the
    first model is explored before the 7B families are built: its anchor, the cheap model's
    slope, its own slope, the other models' anchors, then everything else."""
    first, cheap = models[0], (models[1] if len(models) > 1 else models[0])
    if case.shape == ANCHOR and case.model == first:
        return 0
    if case.model == cheap and case.shape in (ANCHOR, *EXTREMES):
        return 1
    if case.model == first and case.shape in EXTREMES:
        return 2
    if case.shape == ANCHOR:
        return 3
    if case.model in (first, cheap):
        return 4
    return 5


def order_cases(cases: list[Case], models: list[str]) -> list[Case]:
    """Most informative first (see `tier`); then model priority, shape, QLoRA before LoRA."""
    shapes = [ANCHOR, *EXTREMES]

    def key(case: Case) -> tuple[int, int, int, int, int, int]:
        shape_rank = shapes.index(case.shape) if case.shape in shapes else len(shapes)
        return (
            tier(case, models),
            models.index(case.model) if case.model in models else len(models),
            shape_rank,
            case.seq_len,
            case.micro_batch,
            METHODS.index(case.method),
        )

    return sorted(cases, key=key)


def case_spec(case: Case, gpu_type: str) -> LoRAJobSpec:
    """The LoRAJobSpec the trainer runs and the plan estimates: the spec defaults, the case's
    method and shape, one GPU pinned (the plan must not spread it), no eval, no checkpoints."""
    quantization = (
        {"mode": "nf4", "doubleQuant": True, "computeDtype": "bf16"}
        if case.method == "qlora"
        else {"mode": "none", "computeDtype": "bf16"}
    )
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": case.model_id, "source": f"pvc://models/{case.model}"},
            "dataset": {
                "source": "/gpu-check/synthetic.jsonl",  # never read: tokens are synthetic
                "format": "prompt-completion",
                "maxSeqLength": case.seq_len,
                "evalSplit": 0.0,
            },
            "quantization": quantization,
            "training": {
                "maxSteps": case.steps,
                "microBatchSize": case.micro_batch,
                "gradientAccumulation": 1,
                "warmupRatio": 0.0,
                "scheduler": "constant",
                "logInterval": 1000,
                "checkpointInterval": 1000,
            },
            "distributed": {"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"},
            "resources": {"gpuType": gpu_type},
            "output": {"bucket": "gpu-check"},
        }
    )
