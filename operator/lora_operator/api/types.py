"""The LoRAJob API: the single source of truth for the CRD schema, the operator and the trainer.

Every field is camelCase on the wire (Kubernetes convention) and snake_case in Python.
Cross-field rules live twice on purpose: as pydantic validators (clear CLI/trainer errors) and as
CEL rules in the CRD (`CEL_RULES` in `crd.py`), and tests check both agree on the examples.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "finetune.lora-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LoRAJob"
PLURAL = "lorajobs"
SINGULAR = "lorajob"
SHORT_NAMES = ["lj"]
CATEGORIES = ["finetune"]

QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
MODEL_URI_PATTERN = r"^(hf|s3|pvc)://[^\s]+$"
DATA_URI_PATTERN = r"^((s3|pvc|file)://[^\s]+|/[^\s]*)$"
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Trainer exit codes: the Job's podFailurePolicy fails the job at once on a bad config and
# retries (from the latest checkpoint) on anything else.
EXIT_OK = 0
EXIT_INVALID_CONFIG = 3
EXIT_TRANSIENT = 75


class _Model(BaseModel):
    """camelCase aliases; unknown fields rejected (a typo is an error, not a silent default)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Serialise as Kubernetes would store it: camelCase, no nulls."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class QuantizationMode(str, Enum):
    none = "none"
    int8 = "int8"
    nf4 = "nf4"


class ComputeDtype(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class DatasetFormat(str, Enum):
    prompt_completion = "prompt-completion"
    chat = "chat"
    instruction = "instruction"


class Optimizer(str, Enum):
    adamw_torch = "adamw_torch"
    adamw_8bit = "adamw_8bit"
    paged_adamw_8bit = "paged_adamw_8bit"
    paged_adamw_32bit = "paged_adamw_32bit"


class Scheduler(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


class Strategy(str, Enum):
    auto = "auto"
    ddp = "ddp"
    deepspeed_zero2 = "deepspeed-zero2"
    deepspeed_zero3 = "deepspeed-zero3"


class Offload(str, Enum):
    none = "none"
    cpu = "cpu"


class Attention(str, Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


class Phase(str, Enum):
    Pending = "Pending"
    Queued = "Queued"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Suspended = "Suspended"


class ConditionType(str, Enum):
    Validated = "Validated"
    Planned = "Planned"
    Admitted = "Admitted"
    Running = "Running"
    CheckpointSaved = "CheckpointSaved"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Serving = "Serving"


CPU_GPU_TYPE = "cpu"
KBIT_OPTIMIZERS = {Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit, Optimizer.paged_adamw_32bit}


# --------------------------------------------------------------------------------------- spec


class BaseModelSpec(_Model):
    """Which model to fine-tune and where its weights live (never downloaded by the operator)."""

    name: str = Field(
        min_length=1,
        max_length=253,
        description="Model id, e.g. meta-llama/Llama-3.1-8B. Also selects the shipped config.json "
        "the memory model uses unless `config` is given.",
    )
    source: str = Field(
        pattern=MODEL_URI_PATTERN,
        description="Where the trainer loads weights: hf://org/name (from a mounted HF cache), "
        "s3://bucket/prefix, or pvc://claim/path.",
    )
    revision: str | None = Field(default=None, max_length=128, description="Git revision / tag.")
    config: str | None = Field(
        default=None,
        max_length=2048,
        description="Path or http(s) URL of a config.json for models the operator does not ship.",
    )


class QuantizationSpec(_Model):
    mode: QuantizationMode = Field(
        default=QuantizationMode.none,
        description="none (16-bit base), int8 (LLM.int8) or nf4 (QLoRA 4-bit NormalFloat).",
    )
    double_quant: bool = Field(default=True, description="Quantize the nf4 absmax constants too.")
    compute_dtype: ComputeDtype = Field(
        default=ComputeDtype.bf16, description="Dtype for matmuls and the base weights."
    )


class LoRASpec(_Model):
    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=32, gt=0, le=16384, description="LoRA alpha; scale = alpha/r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=64,
        description="Module names to adapt (lm_head only by name), or ['all-linear'] for every "
        "linear layer but lm_head.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if "all-linear" in value and len(value) > 1:
            raise ValueError("'all-linear' must be the only entry of targetModules")
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                raise ValueError(f"invalid module name {name!r}")
        return value


class FieldMapping(_Model):
    """Column names in the dataset rows, when they differ from the format's defaults."""

    prompt: str | None = None
    completion: str | None = None
    messages: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None


class DatasetSpec(_Model):
    source: str = Field(
        pattern=DATA_URI_PATTERN,
        description="JSONL or Parquet: s3://bucket/key, pvc://claim/path, file:///path or /path.",
    )
    format: DatasetFormat = Field(description="prompt-completion, chat or instruction.")
    fields: FieldMapping | None = Field(default=None, description="Column name overrides.")
    eval_split: float = Field(default=0.05, ge=0, le=0.5, description="Fraction held out for eval.")
    eval_source: str | None = Field(
        default=None,
        pattern=DATA_URI_PATTERN,
        description="Separate eval file (overrides evalSplit).",
    )
    max_seq_length: int = Field(default=2048, ge=16, le=1048576)
    packing: bool = Field(default=False, description="Pack several examples per sequence.")
    num_examples: int | None = Field(
        default=None, ge=1, description="Approximate row count; used by `plan` for rank advice."
    )


class TrainingSpec(_Model):
    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    micro_batch_size: int = Field(default=1, ge=1, le=4096)
    gradient_accumulation: int = Field(default=8, ge=1, le=4096)
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    scheduler: Scheduler = Scheduler.cosine
    warmup_ratio: float = Field(default=0.03, ge=0, le=0.5)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    optimizer: Optimizer = Optimizer.adamw_torch
    gradient_checkpointing: bool = True
    attention: Attention = Field(
        default=Attention.sdpa, description="Attention kernel; eager keeps s^2 scores in memory."
    )
    seed: int = Field(default=42, ge=0)
    eval_interval: int = Field(default=100, ge=1, description="Evaluate every N optimizer steps.")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after N evaluations without eval-loss improvement."
    )
    checkpoint_interval: int = Field(default=100, ge=1, description="Checkpoint every N steps.")
    keep_checkpoints: int = Field(default=3, ge=1, le=100, description="Checkpoints kept in S3.")
    log_interval: int = Field(default=10, ge=1)


class DistributedSpec(_Model):
    nodes: int | None = Field(default=None, ge=1, le=1024, description="Omit for automatic.")
    gpus_per_node: int | None = Field(default=None, ge=1, le=64, description="Omit for automatic.")
    strategy: Strategy = Strategy.auto
    offload: Offload = Field(
        default=Offload.none, description="ZeRO CPU offload of optimizer/params."
    )

    @model_validator(mode="after")
    def _explicit_pair(self) -> DistributedSpec:
        if (self.nodes is None) != (self.gpus_per_node is None):
            raise ValueError("set both nodes and gpusPerNode, or neither for automatic placement")
        explicit = self.nodes is not None and self.gpus_per_node is not None
        if explicit and (self.nodes or 0) * (self.gpus_per_node or 0) > 4096:
            raise ValueError("nodes x gpusPerNode must be at most 4096")
        if self.offload == Offload.cpu and self.strategy == Strategy.ddp:
            raise ValueError("offload: cpu needs a DeepSpeed strategy (or auto), not ddp")
        return self


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourceOverrides(_Model):
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN)
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN)
    ephemeral_storage: str | None = Field(default=None, pattern=QUANTITY_PATTERN)


class ResourcesSpec(_Model):
    gpu_type: str = Field(
        default="A100-80GB",
        min_length=1,
        max_length=63,
        description="GPU catalog entry (e.g. A100-80GB, H100-80GB, L4, RTX4090) or 'cpu'.",
    )
    gpu_resource_name: str = Field(default="nvidia.com/gpu", min_length=1, max_length=253)
    max_gpus_per_node: int = Field(default=8, ge=1, le=64)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = Field(default=None, max_length=253)
    requests: ResourceOverrides | None = Field(
        default=None, description="Override planned requests."
    )
    limits: ResourceOverrides | None = Field(default=None, description="Override planned limits.")


class SecretRef(_Model):
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=253)
    access_key_key: str = Field(default="accessKey", min_length=1)
    secret_key_key: str = Field(default="secretKey", min_length=1)


class OutputSpec(_Model):
    bucket: str = Field(pattern=BUCKET_PATTERN)
    prefix: str = Field(default="lorajobs", max_length=512, pattern=r"^[A-Za-z0-9_.\-/]*$")
    endpoint: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/.*)?$", description="S3 endpoint (MinIO URL)."
    )
    region: str | None = None
    credentials_secret: SecretRef | None = Field(
        default=None, description="Secret holding the S3 access and secret keys."
    )


class ServingSpec(_Model):
    enabled: bool = False
    runtime: Literal["vllm"] = "vllm"
    replicas: int = Field(default=1, ge=0, le=100)
    adapter_name: str | None = Field(default=None, pattern=DNS_LABEL_PATTERN, max_length=63)


class LoRAJobSpec(_Model):
    base_model: BaseModelSpec
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    lora: LoRASpec = Field(default_factory=LoRASpec)
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    trainer_image: str | None = Field(default=None, description="Override the operator's image.")
    suspend: bool = False
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    queue_name: str | None = Field(
        default=None, max_length=63, description="Kueue LocalQueue; the Job is created suspended."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> LoRAJobSpec:
        on_cpu = self.resources.gpu_type == CPU_GPU_TYPE
        if on_cpu and self.quantization.mode != QuantizationMode.none:
            raise ValueError(
                f"quantization.mode {self.quantization.mode.value} needs a CUDA GPU: "
                "resources.gpuType must not be 'cpu'"
            )
        if on_cpu and self.training.optimizer in KBIT_OPTIMIZERS:
            raise ValueError(
                "8-bit and paged optimizers need a CUDA GPU (bitsandbytes): use adamw_torch "
                f"with resources.gpuType 'cpu' (optimizer is {self.training.optimizer.value})"
            )
        has_eval = self.dataset.eval_split > 0 or self.dataset.eval_source is not None
        if self.training.early_stopping_patience is not None and not has_eval:
            raise ValueError(
                "training.earlyStoppingPatience needs eval data: set dataset.evalSplit > 0 "
                "or dataset.evalSource"
            )
        return self


# ------------------------------------------------------------------------------------- status


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ResourceAmounts(_Model):
    cpu: str | None = None
    memory: str | None = None
    ephemeral_storage: str | None = None


class PlanStatus(_Model):
    """What the memory model decided, stored in status so `kubectl describe` explains it."""

    gpu_type: str
    gpu_memory_gib: float
    nodes: int
    gpus_per_node: int
    total_gpus: int
    strategy: Strategy
    per_gpu_peak_gib: float
    headroom_gib: float
    breakdown_gib: dict[str, float] = Field(default_factory=dict)
    total_params: int = 0
    trainable_params: int = 0
    requests: ResourceAmounts = Field(default_factory=ResourceAmounts)
    limits: ResourceAmounts = Field(default_factory=ResourceAmounts)
    reason: str = ""
    warnings: list[str] = Field(default_factory=list)


class Progress(_Model):
    """Live training progress; the trainer writes it as progress.json, the operator copies it."""

    state: Literal["starting", "running", "succeeded", "failed", "stopped"] = "starting"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    latest_checkpoint: str | None = None
    adapter_uri: str | None = None
    stopped_early: bool | None = None
    last_error: str | None = None
    updated_at: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total_steps if self.total_steps else 0.0


class RunRecord(_Model):
    """One training run; a spec change starts a new one and the old ones stay listed."""

    id: str
    spec_hash: str
    generation: int | None = None
    output_uri: str
    phase: Phase = Phase.Pending
    adapter_uri: str | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    start_time: str | None = None
    completion_time: str | None = None


class LoRAJobStatus(_Model):
    phase: Phase | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    plan: PlanStatus | None = None
    progress: Progress | None = None
    progress_summary: str | None = Field(default=None, description="e.g. '120/400 (30%)'.")
    latest_checkpoint: str | None = None
    adapter_uri: str | None = Field(default=None, alias="adapterURI")
    current_run: str | None = None
    spec_hash: str | None = None
    runs: list[RunRecord] = Field(default_factory=list)
    restarts: int = 0
    queue_position: int | None = None
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    inference_service: str | None = None


class ObjectMeta(BaseModel):
    """Only what we read; everything else the server keeps is passed through untouched."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LoRAJob(_Model):
    api_version: Literal["finetune.lora-operator.io/v1alpha1"] = Field(
        default="finetune.lora-operator.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["LoRAJob"] = "LoRAJob"
    metadata: ObjectMeta
    spec: LoRAJobSpec
    status: LoRAJobStatus | None = None


class TrainerConfig(_Model):
    """What the operator renders into the run ConfigMap and the trainer reads (no second schema)."""

    job_name: str
    namespace: str = "default"
    run_id: str
    output_uri: str = Field(description="s3://bucket/prefix/job/run: checkpoints, metrics, final.")
    spec: LoRAJobSpec
    plan: PlanStatus | None = None
    deepspeed: dict[str, Any] | None = Field(
        default=None, description="Generated DeepSpeed config when the strategy uses it."
    )
