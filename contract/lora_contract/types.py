"""The LoRAJob API: the single source of truth for the CRD schema, the operator and the trainer.

Every field is camelCase on the wire (Kubernetes convention) and snake_case in Python.
Cross-field rules live twice on purpose: as pydantic validators (clear CLI/trainer errors) and as
CEL rules in the CRD (`CEL_RULES` in `crd.py`), and tests check both agree on the examples.
"""

from __future__ import annotations

import re
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal

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

# Requests and limits: a Kubernetes quantity that is not negative.
QUANTITY_PATTERN = r"^(\+?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
# A path segment that is not `..` (no lookahead: Kubernetes checks patterns with Go's RE2), and
# paths of such segments: a source cannot climb out of its bucket, claim or mount.
_SEGMENT = r"(?:[^/\s.][^/\s]*|\.[^/\s.][^/\s]*|\.\.[^/\s]+|\.)"
_PATH = rf"{_SEGMENT}(?:/{_SEGMENT})*/?"
MODEL_URI_PATTERN = rf"^(?:hf|s3|pvc)://{_PATH}$"
DATA_URI_PATTERN = rf"^(?:(?:s3|pvc)://{_PATH}|file:///?{_PATH}|/{_PATH})$"
_PREFIX_SEGMENT = (
    r"(?:[A-Za-z0-9_\-][A-Za-z0-9_.\-]*|\.[A-Za-z0-9_\-][A-Za-z0-9_.\-]*|\.\.[A-Za-z0-9_.\-]+)"
)
PREFIX_PATTERN = rf"^(?:{_PREFIX_SEGMENT}(?:/{_PREFIX_SEGMENT})*/?)?$"
# An extended resource name (`[domain/]name`), e.g. nvidia.com/gpu or amd.com/gpu.
RESOURCE_NAME_PATTERN = (
    r"^(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_MAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


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


class TrainingMethod(str, Enum):
    """What the run optimises: next-token loss on completions, or preferences between two."""

    sft = "sft"
    dpo = "dpo"


class DPOLossType(str, Enum):
    """The preference losses TRL's DPOTrainer (1.16) offers; `sft` alone is not a preference
    loss, so it is not one of them."""

    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    exo_pair = "exo_pair"
    nca_pair = "nca_pair"
    robust = "robust"
    bco_pair = "bco_pair"
    sppo_hard = "sppo_hard"
    aot = "aot"
    aot_unpaired = "aot_unpaired"
    apo_zero = "apo_zero"
    apo_down = "apo_down"
    discopop = "discopop"
    sigmoid_norm = "sigmoid_norm"


# Which dataset formats hold preference pairs, and what their rows look like: the operator
# validates against this and the trainer reads rows by it.
PREFERENCE_FORMATS: dict[DatasetFormat, str] = {
    DatasetFormat.prompt_completion: "prompt, chosen and rejected strings",
    DatasetFormat.chat: "chosen and rejected message lists (and an optional prompt message list)",
}


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
    Exported = "Exported"  # spec.export.merged: the merged model was written (export_job.py)
    # kstatus' summary conditions (Flux, `kubectl wait`), derived from the ones above by
    # lora_operator.controller.health at every status write (docs/gitops.md)
    Ready = "Ready"  # the latest run succeeded and, with serving on, its adapter serves
    Reconciling = "Reconciling"  # True while work is in progress (abnormal-true)
    Stalled = "Stalled"  # True when nothing proceeds without a change (abnormal-true)


class Reason(StrEnum):
    """Every condition and Event reason the operator writes, so that GitOps health checks,
    alerts and `resync_interval` match one spelling (a test fails on a reason written as a
    literal in the operator). A StrEnum: it is the plain string on the wire and in f-strings.
    Reasons copied from another object (a Job's failure reason, an InferenceService's Ready
    reason) pass through as they are."""

    # Validated
    Valid = "Valid"
    InvalidSpec = "InvalidSpec"
    MissingConfiguration = "MissingConfiguration"
    PolicyViolation = "PolicyViolation"
    # Planned
    Planned = "Planned"
    FetchingModelConfig = "FetchingModelConfig"
    PlanningFailed = "PlanningFailed"
    NewRun = "NewRun"  # a retrain reset the previous run's conditions
    # Admitted
    Admitted = "Admitted"
    QuotaExceeded = "QuotaExceeded"
    WaitingForKueue = "WaitingForKueue"
    # Running, CheckpointSaved, Succeeded, Failed
    Starting = "Starting"
    PodsRunning = "PodsRunning"
    Completed = "Completed"
    Failed = "Failed"
    JobFailed = "JobFailed"  # the Job failed without a reason of its own
    Suspended = "Suspended"
    Saved = "Saved"
    NameConflict = "NameConflict"  # an object the operator would make exists and is not ours
    # Serving
    Deploying = "Deploying"
    Ready = "Ready"
    NotReady = "NotReady"
    KServeNotInstalled = "KServeNotInstalled"
    ServingError = "ServingError"
    Disabled = "Disabled"
    IncompatibleAdapter = "IncompatibleAdapter"  # vLLM cannot load it (serving_compat.py)
    UnknownRun = "UnknownRun"  # serving.run names no succeeded run in status.runs
    Promoted = "Promoted"  # Event: another run's adapter now serves (promotion.py)
    # spec.baseAdapter (controller/base_adapter.py)
    WaitingForBaseAdapter = "WaitingForBaseAdapter"  # the named job or its run is not there yet
    BaseAdapterRefused = "BaseAdapterRefused"  # it can never be used as asked: nothing created
    # Events only
    Queued = "Queued"
    Created = "Created"
    Running = "Running"
    CheckpointSaved = "CheckpointSaved"
    PodFailed = "PodFailed"
    Succeeded = "Succeeded"
    Superseded = "Superseded"
    Expired = "Expired"
    Restored = "Restored"  # a child deleted or edited mid-run was put back (children.py)
    StoppedEarly = "StoppedEarly"  # eval loss stopped improving: the best step's adapter ships
    # Exported (spec.export.merged; controller/export_job.py)
    Exporting = "Exporting"
    Exported = "Exported"  # the export Job succeeded: runs[].mergedURI holds the merged model
    ExportFailed = "ExportFailed"  # the export Job failed; the run stays Succeeded
    # Retraining triggers (controller/schedule.py, controller/data_watch.py)
    Scheduled = "Scheduled"  # a cron tick started a run
    ScheduleSkipped = "ScheduleSkipped"  # a tick skipped: a run active (Forbid), late, no new data
    DataChanged = "DataChanged"  # the watched dataset object changed: a new run
    DataUnreadable = "DataUnreadable"  # the watched dataset object could not be looked at
    # Ready / Reconciling / Stalled (controller/health.py)
    Training = "Training"
    Validating = "Validating"
    ServingRollout = "ServingRollout"
    Serving = "Serving"


class Retrain(Enum):
    """Whether changing a spec field starts a new training run (GitOps re-runs): every field of
    `LoRAJobSpec` and of each `per_field` section carries one, as `Annotated` metadata (kept out
    of the CRD schema); `hashing.py` hashes exactly the `yes` and `when_set` fields and a test
    fails on a field that has none."""

    yes = "yes"  # changes what is trained or where the result goes: a new run
    # Retrains too, but at its declared default it is left out of the hash: a field added after
    # jobs exist must be this (or outside the hash), or the upgrade retrains every job.
    when_set = "when-set"
    no = "no"  # scheduling, serving, lifecycle: applied without retraining
    per_field = "per-field"  # a section whose fields are classified one by one


RETRAINS = Retrain.yes
RETRAINS_WHEN_SET = Retrain.when_set
KEEPS_RUN = Retrain.no
PER_FIELD = Retrain.per_field

CPU_GPU_TYPE = "cpu"
# vLLM's allowed --max-lora-rank values (vllm.config.lora MaxLoRARanks); a served adapter's rank
# must not exceed the largest.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Optimizers that need bitsandbytes' CUDA kernels; the rest run anywhere. The pydantic validator
# and the CRD's CEL rule (generated in lora_operator.api.crd) both use this one set.
KBIT_OPTIMIZERS = {Optimizer.adamw_8bit, Optimizer.paged_adamw_8bit, Optimizer.paged_adamw_32bit}
CPU_OPTIMIZERS = frozenset(o for o in Optimizer if o not in KBIT_OPTIMIZERS)


# --------------------------------------------------------------------------------------- spec


# Shared by the pydantic validator and the CRD's CEL rule (lora_operator.api.crd).
ONE_CONFIG_SOURCE = "set config or configMapRef, not both"


class ConfigMapKeyRef(_Model):
    """One key of a ConfigMap in the LoRAJob's own namespace (the operator reads no other)."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="ConfigMap name.")
    key: str = Field(
        default="config.json",
        pattern=CONFIG_MAP_KEY_PATTERN,
        max_length=253,
        description="Key holding the config.json text.",
    )


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
        description="http(s) URL of a config.json for models the operator does not ship; the "
        "operator fetches only URLs its platform policy allows (allowedModelConfigUrls) and never "
        "reads a local path (`lorajob plan` on your machine also takes a file path). Exclusive "
        "with configMapRef.",
    )
    # Left out of dumps while unset: the retraining hash covers the whole baseModel section, and a
    # new `null` in it would retrain every existing job after an upgrade.
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="A ConfigMap in the job's namespace holding the model's config.json, for "
        "models the operator does not ship. Exclusive with config.",
    )

    @model_validator(mode="after")
    def _one_config_source(self) -> BaseModelSpec:
        if self.config is not None and self.config_map_ref is not None:
            raise ValueError(ONE_CONFIG_SOURCE)
        return self


class QuantizationSpec(_Model):
    """How the frozen base weights are stored during training (QLoRA = nf4)."""

    mode: QuantizationMode = Field(
        default=QuantizationMode.none,
        description="none (16-bit base), int8 (LLM.int8) or nf4 (QLoRA 4-bit NormalFloat).",
    )
    double_quant: bool = Field(default=True, description="Quantize the nf4 absmax constants too.")
    compute_dtype: ComputeDtype = Field(
        default=ComputeDtype.bf16, description="Dtype for matmuls and the base weights."
    )


class LoRASpec(_Model):
    """The adapter: rank, scaling, dropout and which modules get one."""

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
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none", description="Which biases train: none, all, or only the adapted modules'."
    )
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

    prompt: str | None = Field(default=None, description="Prompt column (default 'prompt').")
    completion: str | None = Field(
        default=None, description="Completion column (default 'completion')."
    )
    messages: str | None = Field(
        default=None, description="Chat messages column (default 'messages')."
    )
    instruction: str | None = Field(
        default=None, description="Instruction column (default 'instruction')."
    )
    input: str | None = Field(default=None, description="Optional input column (default 'input').")
    output: str | None = Field(default=None, description="Output column (default 'output').")


class PreferenceFields(_Model):
    """Column names of preference rows, when they differ from the defaults."""

    prompt: str | None = Field(default=None, description="Prompt column (default 'prompt').")
    chosen: str | None = Field(default=None, description="Preferred answer (default 'chosen').")
    rejected: str | None = Field(
        default=None, description="Dispreferred answer (default 'rejected')."
    )


class DPOSpec(_Model):
    """Direct preference optimisation settings (`method: dpo`); the reference model is the
    starting adapter, frozen (TRL's `ref` copy: the base model for a fresh adapter, the SFT model
    with `baseAdapter`), so no second copy of the base model is loaded."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=100,
        description="How far the policy may move from the reference (higher: less).",
    )
    loss_type: DPOLossType = Field(
        default=DPOLossType.sigmoid, description="TRL's DPO loss: sigmoid, ipo, hinge, ..."
    )
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        description="Keep at most this many prompt tokens (its end); must be below "
        "dataset.maxSeqLength. Unset: the prompt is cut only by maxSeqLength.",
    )
    fields: PreferenceFields | None = Field(
        default=None, description="Column name overrides for prompt, chosen and rejected."
    )


class BaseAdapterSpec(_Model):
    """Start from an earlier LoRAJob's adapter in this namespace (SFT, then DPO from it). No
    namespace field: another namespace's adapter is out of reach by construction."""

    job: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="The LoRAJob (same namespace) whose adapter this run continues; same "
        "baseModel and the same lora.r and lora.targetModules as this job.",
    )
    run: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Its run (e.g. r2); must have succeeded. Unset: the run it serves, else its "
        "latest succeeded run, resolved when this job's run starts and recorded in "
        "status.runs[].baseAdapter.",
    )


class DataWatchSpec(_Model):
    """Retrain when the object behind `dataset.source` changes (an S3 object replaced in place)."""

    enabled: bool = Field(
        default=True,
        description="Check the dataset object's identity (S3 version id, else ETag) when the "
        "job is resynced after its run finished, and start one new run when it changed.",
    )
    min_interval_seconds: int = Field(
        default=300,
        ge=5,
        le=31_536_000,
        description="At most one check (one S3 HEAD with the job's credentials) this often.",
    )


class DatasetSpec(_Model):
    """The training data: where it is, its row format, the eval split and the sequence length."""

    source: Annotated[str, RETRAINS] = Field(
        pattern=DATA_URI_PATTERN,
        description="JSONL or Parquet: s3://bucket/key, pvc://claim/path, file:///path or /path.",
    )
    format: Annotated[DatasetFormat, RETRAINS] = Field(
        description="prompt-completion, chat or instruction."
    )
    fields: Annotated[FieldMapping | None, RETRAINS] = Field(
        default=None, description="Column name overrides."
    )
    eval_split: Annotated[float, RETRAINS] = Field(
        default=0.05, ge=0, le=0.5, description="Fraction held out for eval."
    )
    eval_source: Annotated[str | None, RETRAINS] = Field(
        default=None,
        pattern=DATA_URI_PATTERN,
        description="Separate eval file (overrides evalSplit).",
    )
    max_seq_length: Annotated[int, RETRAINS] = Field(
        default=2048, ge=16, le=1048576, description="Tokens per sequence; longer rows are cut."
    )
    packing: Annotated[bool, RETRAINS] = Field(
        default=False, description="Pack several examples per sequence."
    )
    num_examples: Annotated[int | None, RETRAINS] = Field(
        default=None, ge=1, description="Approximate row count; used by `plan` for rank advice."
    )
    # Added after jobs existed: unset, it is outside the hash (today's hashes stay).
    revision: Annotated[str | None, RETRAINS_WHEN_SET] = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Any label for the data's version (a date, a commit, a DVC hash): changing "
        "it starts a new run, the GitOps way to say the data at `source` is new.",
    )
    watch: Annotated[DataWatchSpec | None, KEEPS_RUN] = Field(
        default=None,
        description="Retrain when the S3 object at `source` is replaced (not part of the spec "
        "hash: the run record says trigger DataChanged and the data's identity).",
    )


class TrainingSpec(_Model):
    """The optimisation: length, batch, learning rate, optimizer, checkpoints and evaluation."""

    epochs: Annotated[float, RETRAINS] = Field(
        default=1.0, gt=0, le=1000, description="Passes over the training data."
    )
    max_steps: Annotated[int | None, RETRAINS] = Field(
        default=None, ge=1, description="Overrides epochs when set."
    )
    micro_batch_size: Annotated[int, RETRAINS] = Field(
        default=1, ge=1, le=4096, description="Sequences per GPU per forward pass."
    )
    gradient_accumulation: Annotated[int, RETRAINS] = Field(
        default=8,
        ge=1,
        le=4096,
        description="Micro-batches per optimizer step. Global batch: microBatchSize x "
        "gradientAccumulation (x nodes x gpusPerNode when distributed pins both), kept on any "
        "GPU count the plan picks.",
    )
    learning_rate: Annotated[float, RETRAINS] = Field(
        default=2e-4, gt=0, le=1, description="Peak learning rate."
    )
    scheduler: Annotated[Scheduler, RETRAINS] = Field(
        default=Scheduler.cosine, description="Learning-rate schedule after the warm-up."
    )
    warmup_ratio: Annotated[float, RETRAINS] = Field(
        default=0.03, ge=0, le=0.5, description="Share of the steps spent warming up."
    )
    weight_decay: Annotated[float, RETRAINS] = Field(
        default=0.0, ge=0, le=1, description="AdamW weight decay on the adapter weights."
    )
    max_grad_norm: Annotated[float, RETRAINS] = Field(
        default=1.0, gt=0, description="Gradient clipping norm."
    )
    optimizer: Annotated[Optimizer, RETRAINS] = Field(
        default=Optimizer.adamw_torch,
        description="adamw_torch, or bitsandbytes' 8-bit/paged AdamW (CUDA only).",
    )
    gradient_checkpointing: Annotated[bool, RETRAINS] = Field(
        default=True, description="Recompute activations in backward: less memory, ~30% slower."
    )
    # Same loss to float rounding, so it keeps the run (a RETRAINS field would also change
    # every stored spec hash).
    chunked_loss: Annotated[bool, KEEPS_RUN] = Field(
        default=True,
        description=(
            "Compute lm_head + cross-entropy in chunks (fused kernel on CUDA) instead of "
            "materialising batch x seq x vocab logits: same loss, far less memory."
        ),
    )
    # Moves where the saved tensors live, not what they are: keeps the run.
    activation_offloading: Annotated[bool, KEEPS_RUN] = Field(
        default=False,
        description=(
            "Move the tensors saved for backward to pinned host memory during the forward pass "
            "and bring them back for backward: less GPU memory, more host memory (the pod's "
            "memory request grows), ~15% slower."
        ),
    )
    attention: Annotated[Attention, RETRAINS] = Field(
        default=Attention.sdpa, description="Attention kernel; eager keeps s^2 scores in memory."
    )
    seed: Annotated[int, RETRAINS] = Field(
        default=42, ge=0, description="Seed for initialisation, data order and dropout."
    )
    eval_interval: Annotated[int, RETRAINS] = Field(
        default=100, ge=1, description="Evaluate every N optimizer steps."
    )
    early_stopping_patience: Annotated[int | None, RETRAINS] = Field(
        default=None, ge=1, description="Stop after N evaluations without eval-loss improvement."
    )
    # The three below do not change the adapter, but retrain today: reclassifying them changes
    # every stored spec hash, so it needs a hash-version migration first.
    checkpoint_interval: Annotated[int, RETRAINS] = Field(
        default=100, ge=1, description="Checkpoint every N steps."
    )
    keep_checkpoints: Annotated[int, RETRAINS] = Field(
        default=3, ge=1, le=100, description="Checkpoints kept in S3."
    )
    log_interval: Annotated[int, RETRAINS] = Field(
        default=10, ge=1, description="Record loss, learning rate and throughput every N steps."
    )


class DistributedSpec(_Model):
    """Placement across GPUs and nodes; omit nodes/gpusPerNode to let the memory model decide."""

    nodes: int | None = Field(default=None, ge=1, le=1024, description="Omit for automatic.")
    gpus_per_node: int | None = Field(default=None, ge=1, le=64, description="Omit for automatic.")
    strategy: Strategy = Field(
        default=Strategy.auto,
        description="auto (chosen by the memory model), ddp, deepspeed-zero2 or deepspeed-zero3.",
    )
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
    """A Kubernetes toleration for the trainer pods (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key; empty with Exists = all.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty = all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class ResourceOverrides(_Model):
    """Kubernetes quantities that replace what the plan derived."""

    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="CPU, e.g. 8.")
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Host memory, e.g. 64Gi."
    )
    ephemeral_storage: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Scratch disk, e.g. 100Gi."
    )


class ResourcesSpec(_Model):
    """Which GPUs, and how the trainer pods are scheduled."""

    gpu_type: Annotated[str, RETRAINS] = Field(
        default="A100-80GB",
        min_length=1,
        max_length=63,
        description="GPU catalog entry (e.g. A100-80GB, H100-80GB, L4, RTX4090) or 'cpu'.",
    )
    gpu_resource_name: Annotated[str, KEEPS_RUN] = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
        description="Extended resource the pods request GPUs as.",
    )
    max_gpus_per_node: Annotated[int, RETRAINS] = Field(
        default=8, ge=1, le=64, description="Most GPUs the plan may put on one node."
    )
    node_selector: Annotated[dict[str, str], KEEPS_RUN] = Field(
        default_factory=dict, description="Added to the platform's GPU node selector."
    )
    tolerations: Annotated[list[Toleration], KEEPS_RUN] = Field(
        default_factory=list, description="Tolerations of the trainer pods."
    )
    priority_class_name: Annotated[str | None, KEEPS_RUN] = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,  # what the API server requires of PriorityClass names
        description="PriorityClass of the trainer pods (a lower-case DNS subdomain name).",
    )
    requests: Annotated[ResourceOverrides | None, KEEPS_RUN] = Field(
        default=None, description="Override planned requests."
    )
    limits: Annotated[ResourceOverrides | None, KEEPS_RUN] = Field(
        default=None, description="Override planned limits."
    )


class SecretRef(_Model):
    """A Secret in the job's namespace and the keys holding the S3 credentials."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=253, description="Secret name.")
    access_key_key: str = Field(
        default="accessKey", min_length=1, description="Key of the access key."
    )
    secret_key_key: str = Field(
        default="secretKey", min_length=1, description="Key of the secret key."
    )


class OutputSpec(_Model):
    """Where checkpoints, metrics and the final adapter are written (S3 or MinIO)."""

    bucket: str = Field(pattern=BUCKET_PATTERN, description="Bucket for every run's outputs.")
    prefix: str = Field(
        default="lorajobs",
        max_length=512,
        pattern=PREFIX_PATTERN,
        description="Key prefix; runs go under <prefix>/<namespace>/<job>/<run>/.",
    )
    endpoint: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/.*)?$", description="S3 endpoint (MinIO URL)."
    )
    region: str | None = Field(default=None, description="S3 region, when the store needs one.")
    credentials_secret: SecretRef | None = Field(
        default=None, description="Secret holding the S3 access and secret keys."
    )


# Shared by the pydantic validator and the CRD's CEL rule (lora_operator.api.crd).
SERVING_RUN_WITH_MANUAL = "serving.run is set exactly when serving.promote is manual"
# vLLM's bitsandbytes loader quantizes an unquantized checkpoint to 4-bit only (8-bit needs a
# pre-quantized checkpoint): vllm-project/vllm#8799, #11655; docs.vllm.ai features/quantization/bnb.
SERVING_INT8 = (
    "int8 is not servable: vLLM quantizes a 16-bit checkpoint in flight to 4-bit only "
    "(bitsandbytes); use nf4 or none"
)


class PromotePolicy(str, Enum):
    latest = "latest"  # every succeeded run serves once it finishes (the behaviour before)
    best = "best"  # a new run serves only when its eval loss beats the serving run's
    manual = "manual"  # serving.run names the run; rollback = an older id


class ExportDtype(str, Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class ExportSpec(_Model):
    """After a successful run, merge the adapter into the base model and write it as sharded
    safetensors under the run's merged/ folder (for runtimes without LoRA support). The whole
    section is Retrain.no (KEEPS_RUN on LoRAJobSpec.export): exporting never retrains, and
    nothing here enters the spec hash."""

    merged: bool = Field(
        default=False,
        description="Write the base model with the adapter merged in (merged/ beside final/) "
        "after each successful run, from a CPU Job of its own.",
    )
    dtype: ExportDtype = Field(
        default=ExportDtype.bfloat16,
        description="Weight dtype of the merged model: bfloat16, float16 or float32.",
    )
    max_shard_size: str = Field(
        default="2GB",
        pattern=r"^[1-9][0-9]{0,5}(KB|MB|GB)$",
        description="Largest safetensors shard, e.g. 2GB or 500MB.",
    )


class ServingSpec(_Model):
    """Serve the finished adapter with KServe + vLLM (multi-LoRA). The whole section is
    Retrain.no (KEEPS_RUN on LoRAJobSpec.serving): nothing here enters the spec hash."""

    enabled: bool = Field(default=False, description="Create an InferenceService on success.")
    runtime: Literal["vllm"] = Field(default="vllm", description="Serving runtime (vllm).")
    replicas: int = Field(default=1, ge=0, le=100, description="Predictor replicas.")
    adapter_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Name clients put in the OpenAI `model` field (default: the job's name).",
    )
    mode: Literal["dedicated", "shared"] = Field(
        default="shared",
        description="shared (the default): one server per base model (name, revision, source, "
        "quantization) in the namespace, holding the adapters of every shared job on it; "
        "dedicated: an InferenceService of its own for this adapter (docs/serving.md).",
    )
    promote: PromotePolicy = Field(
        default=PromotePolicy.latest,
        description="Which succeeded run serves: latest (each new one), best (a new one only "
        "when its eval loss beats the serving run's) or manual (serving.run).",
    )
    run: str | None = Field(
        default=None,
        pattern=r"^r[0-9]{1,9}$",
        description="With promote: manual, the id of the run to serve (status.runs[].id, "
        "e.g. r2); an older id rolls back.",
    )
    # Sizing knobs of the serving plan (operator/lora_operator/memory/serving_plan.py).
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="vLLM --max-model-len, tokens per sequence (default: the model's "
        "max_position_embeddings, at most 8192); KV cache for maxConcurrency such sequences "
        "is planned.",
    )
    max_concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Sequences served at once (vLLM --max-num-seqs) whose full-length KV cache "
        "the plan reserves.",
    )
    max_loras: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Adapters in one batch (vLLM --max-loras; --max-cpu-loras is twice it).",
    )
    gpu_type: str | None = Field(
        default=None,
        max_length=63,
        description="GPU type to serve on (default: resources.gpuType when the server fits it, "
        "else the cheapest catalog type that does).",
    )
    quantization: QuantizationMode = Field(
        default=QuantizationMode.none,
        description="Base weights vLLM serves, whatever the training used: none (16-bit; a "
        "QLoRA adapter is usually served so), nf4 (quantized to 4-bit by bitsandbytes while "
        "vLLM loads: --quantization=bitsandbytes, about a third of the weights' memory; "
        "CUDA only). int8 is refused: vLLM quantizes in flight to 4-bit only.",
    )

    @field_validator("quantization")
    @classmethod
    def _servable_quantization(cls, mode: QuantizationMode) -> QuantizationMode:
        if mode is QuantizationMode.int8:
            raise ValueError(SERVING_INT8)
        return mode

    @model_validator(mode="after")
    def _run_with_manual(self) -> ServingSpec:
        if (self.promote is PromotePolicy.manual) != (self.run is not None):
            raise ValueError(SERVING_RUN_WITH_MANUAL)
        return self


# Syntax only (the CRD's pattern and pydantic's): the operator parses the expression and looks
# the zone up (lora_operator.api.cron), since the trainer image carries neither parser nor tzdata.
CRON_PATTERN = (
    r"^(?:@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|[0-9A-Za-z*/,?#\-]+(?: +[0-9A-Za-z*/,?#\-]+){4})$"
)
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*$"


class ConcurrencyPolicy(str, Enum):
    Forbid = "Forbid"  # a tick while a run is active is skipped
    Replace = "Replace"  # a tick stops the active run and starts a new one


class ScheduleWhen(str, Enum):
    DataChanged = "DataChanged"  # a tick retrains only when the dataset object changed
    Always = "Always"  # every tick retrains


class ScheduleSpec(_Model):
    """Retrain on a cron schedule (e.g. weekly on the latest data), like a CronJob."""

    cron: str = Field(
        max_length=128,
        json_schema_extra={"pattern": CRON_PATTERN},
        description="Five-field cron expression (minute hour day-of-month month day-of-week) or "
        "@hourly/@daily/@weekly/@monthly/@yearly, in timeZone.",
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        json_schema_extra={"pattern": TIME_ZONE_PATTERN},
        description="IANA time zone the cron is read in (e.g. Europe/Paris); DST follows it.",
    )
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.Forbid,
        description="Forbid: skip a tick while a run is active; Replace: stop it and start anew.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="A tick noticed later than this after its time is skipped (with an Event); "
        "null: a missed tick still fires once.",
    )
    run_history_limit: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Keep at most this many run records in status (oldest dropped; their S3 "
        "outputs are kept).",
    )
    when: ScheduleWhen = Field(
        default=ScheduleWhen.DataChanged,
        description="DataChanged: a tick retrains only when the dataset object changed since "
        "the last run (needs an s3:// dataset); Always: every tick retrains.",
    )

    @field_validator("cron")
    @classmethod
    def _cron_shape(cls, value: str) -> str:
        if not re.fullmatch(CRON_PATTERN, value):
            raise ValueError(
                "must be five cron fields (minute hour day-of-month month day-of-week) or "
                "@hourly, @daily, @weekly, @monthly, @yearly"
            )
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone_shape(cls, value: str) -> str:
        if not re.fullmatch(TIME_ZONE_PATTERN, value):
            raise ValueError("must be an IANA time zone name such as Europe/Paris")
        return value


class LoRAJobSpec(_Model):
    """A LoRA/QLoRA fine-tuning job."""

    base_model: Annotated[BaseModelSpec, RETRAINS] = Field(
        description="Which model to fine-tune and where its weights live."
    )
    quantization: Annotated[QuantizationSpec, RETRAINS] = Field(default_factory=QuantizationSpec)
    lora: Annotated[LoRASpec, RETRAINS] = Field(default_factory=LoRASpec)
    dataset: Annotated[DatasetSpec, PER_FIELD]
    training: Annotated[TrainingSpec, PER_FIELD] = Field(default_factory=TrainingSpec)
    distributed: Annotated[DistributedSpec, RETRAINS] = Field(default_factory=DistributedSpec)
    resources: Annotated[ResourcesSpec, PER_FIELD] = Field(default_factory=ResourcesSpec)
    output: Annotated[OutputSpec, RETRAINS]
    serving: Annotated[ServingSpec, KEEPS_RUN] = Field(default_factory=ServingSpec)
    export: Annotated[ExportSpec, KEEPS_RUN] = Field(
        default_factory=ExportSpec,
        description="Merged-model export after a successful run (never retrains).",
    )
    trainer_image: Annotated[str | None, KEEPS_RUN] = Field(
        default=None, description="Override the operator's image."
    )
    suspend: Annotated[bool, KEEPS_RUN] = Field(
        default=False,
        description="Stop the trainer pods and keep the checkpoints; false again resumes.",
    )
    ttl_seconds_after_finished: Annotated[int | None, KEEPS_RUN] = Field(
        default=None, ge=0, description="Delete the LoRAJob this long after it finished."
    )
    queue_name: Annotated[str | None, KEEPS_RUN] = Field(
        default=None, max_length=63, description="Kueue LocalQueue; the Job is created suspended."
    )
    schedule: Annotated[ScheduleSpec | None, KEEPS_RUN] = Field(
        default=None,
        description="Retrain on a cron schedule; each fired tick starts one run (spec hash "
        "unchanged, trigger Schedule in the run record).",
    )
    # Added after jobs existed: at their defaults they stay out of the hash.
    method: Annotated[TrainingMethod, RETRAINS_WHEN_SET] = Field(
        default=TrainingMethod.sft,
        description="sft (supervised, loss on completions) or dpo (preference pairs).",
    )
    dpo: Annotated[DPOSpec | None, RETRAINS_WHEN_SET] = Field(
        default=None, description="DPO settings; only with method dpo (defaults when unset)."
    )
    base_adapter: Annotated[BaseAdapterSpec | None, RETRAINS_WHEN_SET] = Field(
        default=None,
        description="Train on from another LoRAJob's adapter in this namespace (e.g. DPO from an "
        "SFT job's) instead of a fresh one.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> LoRAJobSpec:
        on_cpu = self.resources.gpu_type == CPU_GPU_TYPE
        if on_cpu and self.quantization.mode != QuantizationMode.none:
            raise ValueError(
                f"quantization.mode {self.quantization.mode.value} needs a CUDA GPU: "
                "resources.gpuType must not be 'cpu'"
            )
        if on_cpu and self.training.optimizer not in CPU_OPTIMIZERS:
            raise ValueError(
                "8-bit and paged optimizers need a CUDA GPU (bitsandbytes): use adamw_torch "
                f"with resources.gpuType 'cpu' (optimizer is {self.training.optimizer.value})"
            )
        serve_on = self.serving.gpu_type or self.resources.gpu_type
        if serve_on == CPU_GPU_TYPE and self.serving.quantization != QuantizationMode.none:
            raise ValueError(
                f"spec.serving.quantization {self.serving.quantization.value} needs a CUDA GPU "
                "(bitsandbytes): the server runs on 'cpu' (serving.gpuType, else "
                "resources.gpuType); use none"
            )
        if self.serving.enabled and self.lora.r > VLLM_LORA_RANKS[-1]:
            raise ValueError(
                f"serving.enabled: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]} "
                f"(lora.r is {self.lora.r})"
            )
        preference_errors(self)
        has_eval = self.dataset.eval_split > 0 or self.dataset.eval_source is not None
        if self.training.early_stopping_patience is not None and not has_eval:
            raise ValueError(
                "training.earlyStoppingPatience needs eval data: set dataset.evalSplit > 0 "
                "or dataset.evalSource"
            )
        return self


def preference_errors(spec: LoRAJobSpec) -> None:
    """The rules of `method`/`dpo` that span sections (a ValueError naming the fields)."""
    if spec.method != TrainingMethod.dpo:
        if spec.dpo is not None:
            raise ValueError("dpo: set only with method dpo (method is sft)")
        return
    if spec.dataset.format not in PREFERENCE_FORMATS:
        kinds = "; ".join(f"{f.value}: {what}" for f, what in PREFERENCE_FORMATS.items())
        raise ValueError(
            f"dataset.format holds no preference pairs with method dpo (it is "
            f"{spec.dataset.format.value}); method dpo reads {kinds}"
        )
    if spec.dataset.packing:
        raise ValueError("dataset.packing: method dpo keeps each pair whole (set packing false)")
    prompt_cap = spec.dpo.max_prompt_length if spec.dpo else None
    if prompt_cap is not None and prompt_cap >= spec.dataset.max_seq_length:
        raise ValueError(
            f"dpo.maxPromptLength {prompt_cap} must be below dataset.maxSeqLength "
            f"{spec.dataset.max_seq_length} (the answers need room)"
        )


# ------------------------------------------------------------------------------------- status


class _Observed(_Model):
    """Status-side models: read back from the cluster or from progress.json, where a newer or
    older writer may have added fields, so unknown keys are ignored instead of failing."""

    model_config = ConfigDict(**{**_Model.model_config, "extra": "ignore"})


class Condition(_Observed):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ResourceAmounts(_Observed):
    """A pod's CPU, host memory and scratch disk (Kubernetes quantities)."""

    cpu: str | None = None
    memory: str | None = None
    ephemeral_storage: str | None = None

    def overridden_by(self, user: ResourceOverrides | None) -> ResourceAmounts:
        """The user's `spec.resources.requests/limits` win key by key: the one rule the plan
        and the rendered pods share (the pods re-apply it, since an override does not replan)."""
        if user is None:
            return self
        return ResourceAmounts(
            cpu=user.cpu or self.cpu,
            memory=user.memory or self.memory,
            ephemeral_storage=user.ephemeral_storage or self.ephemeral_storage,
        )

    def to_kubernetes(self) -> dict[str, str]:
        """As a container's resources map: cpu, memory, ephemeral-storage (unset ones left out)."""
        names = {
            "cpu": self.cpu,
            "memory": self.memory,
            "ephemeral-storage": self.ephemeral_storage,
        }
        return {name: value for name, value in names.items() if value}


class ForecastStatus(_Observed):
    """Time and cost the plan expects (operator/lora_operator/memory/forecast.py): training
    tokens x FLOPs per token over the GPUs' catalog peak x efficiency."""

    tokens: int = Field(description="Training tokens over all epochs (eval passes excluded).")
    tokens_from: str = Field(
        default="", description="dataset, numExamples x maxSeqLength, or maxSteps."
    )
    flops_per_token: float = Field(default=0, description="Training FLOPs per token.")
    total_flops: float = Field(default=0, description="Training + evaluation FLOPs.")
    peak_tflops: float = Field(default=0, description="Catalog peak per GPU (TFLOP/s).")
    efficiency: float = Field(default=0, description="Share of the peak assumed.")
    hours: float = Field(description="Wall-clock hours of training (pod start excluded).")
    gpu_hours: float = Field(description="hours x GPUs.")
    cost: float | None = Field(
        default=None, description="gpuHours x the catalog's pricePerGpuHour; null: no price."
    )
    assumptions: list[str] = Field(default_factory=list)


class RunForecast(_Observed):
    """A run's forecast, frozen when the run is planned, and what it actually took."""

    gpu_type: str
    gpus: int
    efficiency: float = Field(description="Catalog efficiency the forecast assumed.")
    hours: float = Field(description="Forecast wall-clock hours.")
    gpu_hours: float
    cost: float | None = None
    actual_hours: float | None = Field(
        default=None, description="Job creation to completion (includes pod start)."
    )
    actual_gpu_hours: float | None = None
    forecast_ratio: float | None = Field(
        default=None,
        description="actualHours / forecast hours of the steps done (early stop counts).",
    )


class TrainingOverrides(_Observed):
    """Training knobs the plan changed so the job fits (memory/fit.py): none changes the maths
    (the global batch micro x accumulation x ranks is kept); null = the spec's value."""

    micro_batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation: int | None = Field(default=None, ge=1)
    gradient_checkpointing: bool | None = None
    chunked_loss: bool | None = None
    activation_offloading: bool | None = None

    def applied_to(self, spec: LoRAJobSpec) -> LoRAJobSpec:
        """`spec` with these values in spec.training: what the trainer runs."""
        changes = self.model_dump(exclude_none=True)
        if not changes:
            return spec
        training = spec.training.model_copy(update=changes)
        return spec.model_copy(update={"training": training})


class PlacementAlternative(_Observed):
    """A fitting placement the plan did not choose, with what it would cost (memory/objective.py:
    the cheapest forecast wins; more GPUs only when they save more than 10%)."""

    nodes: int
    gpus_per_node: int
    strategy: Strategy
    per_gpu_peak_gib: float
    gpu_hours: float | None = Field(
        default=None, description="Forecast GPU-hours; null when the forecast is unknown."
    )
    hours: float | None = Field(default=None, description="Forecast wall-clock hours.")
    relative_cost: float = Field(description="GPU-hours relative to the chosen placement.")
    changes: list[str] = Field(
        default_factory=list, description="What the trainer would run differently there."
    )


class ServingPlanStatus(_Observed):
    """The vLLM server the memory model sized for this job (memory/serving_plan.py): what the
    InferenceService requests and the vLLM flags it runs with."""

    gpu_type: str
    gpu_memory_gib: float = 0.0
    gpus: int = Field(description="GPUs of the predictor pod (= tensorParallelSize; 0 on CPU).")
    tensor_parallel_size: int = 1
    resource_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    memory_gib: dict[str, float] = Field(
        default_factory=dict, description="Per-GPU memory by term (GiB)."
    )
    per_gpu_gib: float = 0.0
    gpu_memory_utilization: float | None = None
    vllm_args: list[str] = Field(default_factory=list, description="The sizing flags of vLLM.")
    requests: ResourceAmounts = Field(default_factory=ResourceAmounts)
    limits: ResourceAmounts = Field(default_factory=ResourceAmounts)
    reason: str = ""


class PlanStatus(_Observed):
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
    forecast: ForecastStatus | None = None
    adjustments: list[str] = Field(
        default_factory=list,
        description="What the plan changed so the job fits, and why (strategy auto only).",
    )
    global_batch_size: int | None = Field(
        default=None,
        description="Samples per optimizer step: the spec's on every placement "
        "(microBatchSize x gradientAccumulation, x nodes x gpusPerNode when both are set).",
    )
    termination_grace_seconds: int | None = Field(
        default=None,
        description="The trainer pods' terminationGracePeriodSeconds: after a SIGTERM "
        "(preemption, drain) one step and a checkpoint save fit before the SIGKILL.",
    )
    termination_grace_basis: str = Field(
        default="", description="How terminationGraceSeconds was derived."
    )
    unit: Literal["GPU", "process"] = Field(
        default="GPU", description="What totalGpus counts: GPUs, or CPU training processes."
    )
    placement: str = Field(
        default="", description="Short placement, e.g. '2 x 8 H100-80GB' or '2 CPU processes'."
    )
    alternatives: list[PlacementAlternative] = Field(
        default_factory=list,
        description="Other fitting placements and their forecast cost (the cheapest wins).",
    )
    training_overrides: TrainingOverrides | None = Field(
        default=None, description="The changed training values the trainer runs with."
    )
    serving: ServingPlanStatus | None = Field(
        default=None, description="The serving plan (with serving.enabled): GPUs, flags, pods."
    )

    def applied_to(self, spec: LoRAJobSpec) -> LoRAJobSpec:
        """`spec` as the trainer runs it: the plan's training overrides applied."""
        return self.training_overrides.applied_to(spec) if self.training_overrides else spec


class Progress(_Observed):
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
    # The evaluated step with the lowest eval loss: with evaluation on, its adapter is final/
    best_step: int | None = None
    best_eval_loss: float | None = None
    resumed_from: int | None = None  # the checkpoint step this attempt resumed from
    last_error: str | None = None
    updated_at: str | None = None
    # method dpo: mean (chosen - rejected) implicit reward and the share of pairs it ranks right
    reward_margin: float | None = None
    reward_accuracy: float | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total_steps if self.total_steps else 0.0


class RunTrigger(StrEnum):
    """What started a run (`RunRecord.trigger`)."""

    Spec = "Spec"  # the first run, or a retraining field changed (a new spec hash)
    DataChanged = "DataChanged"  # the watched dataset object was replaced (same spec hash)
    Schedule = "Schedule"  # a cron tick of spec.schedule (same spec hash)


class BaseAdapterRecord(_Observed):
    """The adapter a run started from (spec.baseAdapter), resolved when the run started."""

    job: str
    run: str
    uri: str


class RunLineage(_Observed):
    """Where a run's adapter came from, copied from its final MANIFEST.json (the trainer's
    model card README.md says the same): enough to reproduce or audit it."""

    base_model: str | None = None
    base_model_revision: str | None = None
    dataset_uri: str | None = Field(default=None, alias="datasetURI")
    dataset_sha256: str | None = None
    trainer_image: str | None = None
    hyperparameters: dict[str, Any] | None = None
    best_eval_loss: float | None = None
    adapter_sha256: str | None = None
    gpu_hours: float | None = None
    base_adapter_uri: str | None = Field(default=None, alias="baseAdapterURI")


class RunRecord(_Observed):
    """One training run; a spec change starts a new one and the old ones stay listed."""

    id: str
    spec_hash: str
    generation: int | None = None
    output_uri: str = Field(alias="outputURI")
    phase: Phase = Phase.Pending
    adapter_uri: str | None = Field(default=None, alias="adapterURI")
    merged_uri: str | None = Field(
        default=None,
        alias="mergedURI",
        description="The merged model (spec.export.merged), once its export Job succeeded.",
    )
    final_loss: float | None = None
    final_eval_loss: float | None = None
    start_time: str | None = None
    completion_time: str | None = None
    forecast: RunForecast | None = None
    trigger: str | None = Field(  # a RunTrigger; str: a newer writer's value still reads
        default=None,
        description="What started the run: Spec (a retraining field changed, or the first), "
        "DataChanged (the watched dataset object changed) or Schedule (a cron tick).",
    )
    data_identity: str | None = Field(
        default=None,
        description="The dataset object the run was started on: version:<id> or etag:<etag>.",
    )
    lineage: RunLineage | None = None
    base_adapter: BaseAdapterRecord | None = Field(
        default=None, description="The adapter this run started from (spec.baseAdapter)."
    )


class LoRAJobStatus(_Observed):
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
    serving_run: str | None = Field(
        default=None, description="The run whose adapter the InferenceService serves."
    )
    last_schedule_time: str | None = Field(
        default=None,
        description="The last cron tick acted on (fired or skipped): a restart never fires it "
        "again.",
    )
    data_checked_time: str | None = Field(
        default=None, description="When the watched dataset object was last looked at."
    )


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
    output_uri: str = Field(description="s3://bucket/prefix/namespace/job/run: the run's outputs.")
    spec: LoRAJobSpec
    plan: PlanStatus | None = None
    deepspeed: dict[str, Any] | None = Field(
        default=None, description="Generated DeepSpeed config when the strategy uses it."
    )
    spec_hash: str | None = Field(
        default=None, description="The run's spec hash: lineage in the model card and manifest."
    )
    base_adapter_uri: str | None = Field(
        default=None,
        alias="baseAdapterURI",
        description="spec.baseAdapter resolved: the adapter folder the run starts from.",
    )
