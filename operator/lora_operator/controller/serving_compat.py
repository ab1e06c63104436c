"""Can vLLM load this adapter on this server? Checked before the InferenceService points at it,
so an adapter vLLM would refuse (and crash-loop the predictor on) gets Serving=False with the
field that is wrong instead of a broken server.

The rules are vLLM's own (vllm.lora.peft_helper PEFTHelper.validate_legal: no
modules_to_save, no DoRA, no bias without --enable-lora-bias, r <= --max-lora-rank) plus the
base model the adapter was trained on. Two passes, both pure: `spec_problem` from the LoRAJob
spec alone (before any adapter exists), and `adapter_problem` from the adapter_config.json the
trainer wrote (after success; an older run promoted by rollback may have had another spec).

The target-module table lists, per `model_type` of the shipped configs, the module names vLLM's
model class maps LoRA weights onto (its `packed_modules_mapping` members and the other linear
projections). Embeddings and lm_head are left out: vLLM dropped LoRA on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_contract.types import VLLM_LORA_RANKS, LoRAJobSpec

# vLLM's --max-lora-rank choices (vllm.config.lora MaxLoRARanks); an adapter's r may be any
# value up to the server's choice (vLLM pads it).
VLLM_SUPPORTED_RANKS = frozenset({1, *VLLM_LORA_RANKS})

_DECODER = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
VLLM_TARGET_MODULES: dict[str, frozenset[str]] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "gemma2": _DECODER,
    # Phi-3 fuses its projections in the checkpoint itself.
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    # vLLM's Mixtral LoRA covers attention only: not the experts (w1/w2/w3) nor the router.
    "mixtral": frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}),
}
# A config from a ConfigMap or URL: only names every table above accepts in some model.
ANY_KNOWN_TARGET = frozenset().union(*VLLM_TARGET_MODULES.values())
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Incompatibility:
    """`field`: where the problem is (a spec field, or adapter_config.json's key)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def allowed_targets(model_type: str | None) -> frozenset[str]:
    return VLLM_TARGET_MODULES.get(model_type or "", ANY_KNOWN_TARGET)


def _rank_problem(r: Any, max_lora_rank: int, field: str) -> Incompatibility | None:
    """vLLM's PEFTHelper.validate_legal: r <= --max-lora-rank, itself one of vLLM's choices."""
    if max_lora_rank not in VLLM_SUPPORTED_RANKS:
        ranks = ", ".join(str(x) for x in sorted(VLLM_SUPPORTED_RANKS))
        return Incompatibility(
            "--max-lora-rank", f"{max_lora_rank} is not one vLLM accepts ({ranks})"
        )
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return Incompatibility(field, f"rank {r!r} is not a positive integer")
    if r > max_lora_rank:
        return Incompatibility(
            field, f"rank {r} is above the server's --max-lora-rank {max_lora_rank}"
        )
    return None


def _targets_problem(
    targets: list[str], model_type: str | None, field: str
) -> Incompatibility | None:
    allowed = allowed_targets(model_type)
    if targets == [ALL_LINEAR]:
        if model_type in VLLM_TARGET_MODULES and model_type != "mixtral":
            return None
        return Incompatibility(
            field,
            f"'{ALL_LINEAR}' adapts modules vLLM does not serve for model_type "
            f"{model_type or 'unknown'}; list them from: {', '.join(sorted(allowed))}",
        )
    unsupported = sorted(set(targets) - allowed)
    if unsupported:
        return Incompatibility(
            field,
            f"vLLM serves no LoRA on {', '.join(unsupported)} for model_type "
            f"{model_type or 'unknown'} (supported: {', '.join(sorted(allowed))})",
        )
    return None


def spec_problem(
    spec: LoRAJobSpec, model_type: str | None, max_lora_rank: int
) -> Incompatibility | None:
    """What the spec alone rules out for serving (checked before the adapter exists)."""
    lora = spec.lora
    rank = _rank_problem(lora.r, max_lora_rank, "lora.r")
    if rank is not None:
        return rank
    if lora.use_dora:
        return Incompatibility("lora.useDora", "vLLM serves no DoRA adapter")
    if lora.bias != "none":
        return Incompatibility("lora.bias", "vLLM loads no LoRA bias: use bias: none")
    return _targets_problem(lora.target_modules, model_type, "lora.targetModules")


def adapter_problem(
    config: Mapping[str, Any], spec: LoRAJobSpec, model_type: str | None, max_lora_rank: int
) -> Incompatibility | None:
    """What the adapter_config.json the trainer wrote rules out on this server and base model."""
    where = "adapter_config.json"
    base = config.get("base_model_name_or_path")
    if base != spec.base_model.name:
        return Incompatibility(
            f"{where} base_model_name_or_path",
            f"{base!r} is not spec.baseModel.name {spec.base_model.name!r}",
        )
    revision = config.get("revision")
    if revision != spec.base_model.revision:
        return Incompatibility(
            f"{where} revision",
            f"base model revision {revision!r} is not spec.baseModel.revision "
            f"{spec.base_model.revision!r}",
        )
    if config.get("modules_to_save"):
        return Incompatibility(
            f"{where} modules_to_save",
            f"vLLM loads no fully trained modules ({config['modules_to_save']!r})",
        )
    if config.get("use_dora"):
        return Incompatibility(f"{where} use_dora", "vLLM serves no DoRA adapter")
    if config.get("bias", "none") != "none":
        return Incompatibility(f"{where} bias", "vLLM loads no LoRA bias")
    rank = _rank_problem(config.get("r"), max_lora_rank, f"{where} r")
    if rank is not None:
        return rank
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT writes a regex or 'all-linear' as a plain string
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        return Incompatibility(f"{where} target_modules", f"not a list of names: {targets!r}")
    return _targets_problem(targets, model_type, f"{where} target_modules")


def shipped_model_type(base_model: str) -> str | None:
    """The model_type of a shipped config (memory/configs), None for any other model: the
    operator's ConfigMap/URL configs are fetched for planning and not kept."""
    import json

    from ..memory.registry import shipped_config_path

    path = shipped_config_path(base_model)
    if path is None:
        return None
    model_type = json.loads(path.read_text()).get("model_type")
    return model_type if isinstance(model_type, str) else None
