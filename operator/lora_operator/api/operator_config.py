"""The operator's own configuration: the chart renders it into a ConfigMap (`config.yaml`), the
operator reloads it without restart, and the memory model takes its GPU catalog from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from lora_contract.pod import DEFAULT_RENDEZVOUS_PORT
from lora_contract.types import SecretRef, _Model


class GpuType(_Model):
    """One catalog entry. `memoryGib` is what the card reports (e.g. 80 for an A100-80GB)."""

    name: str = Field(min_length=1, max_length=63)
    memory_gib: float = Field(gt=0, le=4096)
    resource_name: str = Field(default="nvidia.com/gpu")
    cuda: bool = Field(default=True, description="bitsandbytes/DeepSpeed CUDA kernels available.")
    bf16: bool = Field(default=True, description="Native bf16 support (Ampere or newer).")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels that select nodes with this GPU."
    )
    max_per_node: int = Field(default=8, ge=1, le=64)
    peak_tflops: float | None = Field(
        default=None,
        gt=0,
        description="Dense 16-bit tensor peak per GPU, TFLOP/s (bf16; fp16 where no bf16), "
        "from the vendor's datasheet; null: no time forecast.",
    )
    efficiency: float = Field(
        default=0.40,
        gt=0,
        le=1,
        description="Share of peakTflops a LoRA step reaches, recomputation counted; "
        "`lorajob calibrate` measures it from finished runs.",
    )
    price_per_gpu_hour: float | None = Field(
        default=None, ge=0, description="Cost of one GPU-hour; null: the plan shows no cost."
    )
    safety_margin_fraction: float = Field(
        default=0.10,
        ge=0,
        lt=1,
        description="Share of memoryGib the plan keeps free for estimate error: a peak inside "
        "it is a warning, not a refusal (only a peak above memoryGib is refused).",
    )


class Quota(_Model):
    """GPU limits; null means unlimited."""

    gpus: int | None = Field(default=None, ge=0, description="Total GPUs across all types.")
    gpu_types: dict[str, int] = Field(
        default_factory=dict, description="Per GPU type limits, e.g. {H100-80GB: 8}."
    )


class Quotas(_Model):
    namespaces: dict[str, Quota] = Field(default_factory=dict, description="Per namespace.")
    default: Quota = Field(default_factory=Quota, description="Namespaces not listed above.")
    cluster: Quota = Field(default_factory=Quota, description="Across all namespaces.")


class S3Defaults(_Model):
    """Used when a LoRAJob's output omits endpoint or credentials (e.g. the bundled MinIO)."""

    endpoint: str | None = None
    region: str | None = None
    credentials_secret: SecretRef | None = None


class KueueConfig(_Model):
    enabled: bool = Field(default=False, description="Defer admission of every job to Kueue.")
    default_queue: str | None = Field(default=None, description="LocalQueue when spec has none.")


CREDENTIALS_OPT_IN_LABEL = "finetune.lora-operator.io/credentials"


TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class TolerationRule(_Model):
    """One toleration a job may carry: its taint key, and the effects it may name."""

    key: str = Field(min_length=1, max_length=317, description="Taint key, as written.")
    effects: list[TaintEffect] = Field(
        default_factory=list,
        description="Effects the toleration may name; empty: any, including none (all effects).",
    )


class PlatformPolicy(_Model):
    """What a LoRAJob author may choose, so that being allowed to create a LoRAJob does not mean
    being allowed to run any image with any Secret, or to send data anywhere. Enforced by
    controller/policy.py at every reconcile; every refusal names the policy field and the spec
    field (docs/operating.md, "Platform policy")."""

    allowed_trainer_images: list[str] = Field(
        default_factory=list,
        description="Images spec.trainerImage may name besides the operator's trainerImage: exact "
        "references, or prefixes ending in '/' (a registry or path), ':' (any tag of a "
        "repository) or '@' (any digest of a repository). Empty: only the operator's trainerImage.",
    )
    allowed_s3_endpoints: list[str] = Field(
        default_factory=list,
        description="Endpoints spec.output.endpoint may name besides the operator's s3.endpoint "
        "(scheme://host[:port]; a bare host means https, default ports are ignored). Empty: only "
        "s3.endpoint. Link-local, metadata and loopback addresses are refused unless listed here.",
    )
    allowed_priority_classes: list[str] | None = Field(
        default=None,
        description="PriorityClasses spec.resources.priorityClassName may name; null: any but "
        "the system-* classes.",
    )
    allowed_node_selector_keys: list[str] | None = Field(
        default=None,
        description="Label keys spec.resources.nodeSelector may name (exactly as written); null: "
        "any key but the control-plane node roles (node-role.kubernetes.io/control-plane, "
        "node-role.kubernetes.io/master, in any spelling).",
    )
    allowed_tolerations: list[TolerationRule] | None = Field(
        default=None,
        description="Tolerations spec.resources.tolerations may carry; null: any with a key but "
        "the control-plane taints (a toleration without a key tolerates every taint).",
    )
    require_secret_opt_in: bool = Field(
        default=True,
        description="A Secret named in spec.output.credentialsSecret must carry the opt-in label "
        "(the operator's own s3.credentialsSecret is exempt). False: any Secret of the namespace.",
    )
    secret_opt_in_label: str = Field(
        default=CREDENTIALS_OPT_IN_LABEL,
        min_length=1,
        max_length=317,
        description="Label (value 'true') a Secret carries to be usable as job credentials.",
    )
    allowed_model_config_urls: list[str] = Field(
        default_factory=list,
        description="URL prefixes baseModel.config may fetch from; empty: no URL (shipped "
        "configs and ConfigMaps only).",
    )
    model_config_max_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    model_config_timeout_seconds: float = Field(default=10, gt=0, le=120)

    @field_validator("allowed_s3_endpoints")
    @classmethod
    def _endpoints_parse(cls, endpoints: list[str]) -> list[str]:
        """A typo here would silently allow nothing: refuse the config (the last good one stays)."""
        # Imported here: the storage module loads minio, half of `lorajob plan`'s start-up.
        from lora_contract.storage import StorageError, parse_endpoint

        for endpoint in endpoints:
            if not endpoint or any(char.isspace() for char in endpoint):
                raise ValueError(f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000")
            try:
                parse_endpoint(endpoint)
            except StorageError as exc:
                raise ValueError(str(exc)) from None
        return endpoints


class OperatorConfig(_Model):
    trainer_image: str = "ghcr.io/lora-operator/trainer:0.1.0"
    serving_image: str = Field(
        default="kserve/huggingfaceserver:v0.15.2",
        min_length=1,
        description="The vLLM server image of shared servers' ServingRuntimes (KServe's "
        "huggingface server: --backend=vllm, vLLM's filesystem LoRA resolver).",
    )
    image_pull_policy: str = "IfNotPresent"
    gpu_catalog: list[GpuType] = Field(
        default_factory=list, description="Extra or overriding catalog entries."
    )
    quotas: Quotas = Field(default_factory=Quotas)
    kueue: KueueConfig = Field(default_factory=KueueConfig)
    s3: S3Defaults = Field(default_factory=S3Defaults)
    policy: PlatformPolicy = Field(default_factory=PlatformPolicy)
    model_cache_claim: str | None = Field(
        default=None, description="PVC with a Hugging Face cache, mounted for hf:// models."
    )
    trainer_service_account: str | None = Field(
        default=None, description="ServiceAccount for trainer pods (no API access needed)."
    )
    progress_interval_seconds: float = Field(default=15, gt=0, le=3600)
    rendezvous_port: int = Field(default=DEFAULT_RENDEZVOUS_PORT, ge=1, le=65535)
    backoff_limit_per_index: int = Field(default=3, ge=0, le=100)
