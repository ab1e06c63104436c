"""Count a model's parameters exactly from its already-loaded config.json, module by module, on
the meta device (no weights, no memory, no IO): the memory model needs exact counts of the
quantizable linears, the 16-bit rest, and the in/out sizes of every module LoRA may adapt.

Mixtral in transformers 5 stores its experts as fused 3-D parameters (`experts.gate_up_proj` of
shape experts x 2*intermediate x hidden and `experts.down_proj`), not as nn.Linear modules, so
PEFT's `all-linear` does not reach them. They are counted as `ExpertWeight`s: quantizable like
linears, and adaptable when targeted by name (`gate_up_proj`, `down_proj`, or the older names
`w1`/`w3` for the two halves of `gate_up_proj` and `w2` for `down_proj`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import PlanningError
from .model_config import ModelConfig


@dataclass(frozen=True)
class LinearModule:
    """One nn.Linear inside the model (or one half of a fused expert weight)."""

    name: str  # full dotted module name, e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int
    copies: int = 1  # number of experts sharing this name in a fused 3-D weight

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def params(self) -> int:
        return self.copies * self.in_features * self.out_features


# Far above any released model (Llama 3.1 405B has 126 layers).
MAX_LAYERS = 1024

# Linear names that only a gated MLP has (Llama/Mistral/Qwen/Gemma, Phi-3's fused gate_up,
# Mixtral's experts); Phi-2, Falcon and GPT-NeoX have fc1/dense_h_to_4h -> act -> fc2.
GATED_MLP_NAMES = frozenset({"gate_proj", "gate_up_proj", "w1", "w3"})


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs from a config: sizes and exact parameter counts."""

    source: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int
    experts_per_token: int
    total_params: int
    quantizable_params: int  # decoder linears and expert weights (what bitsandbytes quantizes)
    quantizable_rows: int  # output rows of those weights (LLM.int8 keeps one fp32 scale per row)
    linears: tuple[LinearModule, ...]  # every adaptable linear except lm_head
    largest_layer_params: int  # parameters of one decoder layer (ZeRO-3 gathers one at a time)
    mlp_gated: bool = True  # gate * act(up) (SwiGLU/GeGLU) rather than fc1 -> act -> fc2
    hidden_act: str = "silu"
    head: LinearModule | None = None  # lm_head: adapted only when named (all-linear skips it)

    @property
    def unquantized_params(self) -> int:
        """Embeddings, lm_head, norms, biases, routers: kept in 16-bit under quantization."""
        return self.total_params - self.quantizable_params

    @property
    def module_names(self) -> list[str]:
        heads = [self.head] if self.head is not None else []
        return sorted({m.short_name for m in (*self.linears, *heads)})


def architecture_of(config: ModelConfig) -> Architecture:
    """The architecture of an already-loaded config.json: a shipped config's from the
    precomputed file (no torch import), any other counted on the meta device, then cached."""
    from .shapes import precomputed_architecture  # imported here: shapes imports this module

    precomputed = precomputed_architecture(config)
    if precomputed is not None:
        return precomputed
    return _architecture_cached(config.source, json.dumps(config.data, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _architecture_cached(source: str, config_json: str) -> Architecture:
    return count_architecture(source, json.loads(config_json))


def count_architecture(source: str, data: dict[str, Any]) -> Architecture:
    """Instantiate the model on the meta device and walk its modules."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # A deep copy: transformers edits nested dicts (rope_scaling) in place, and `data` is the
    # caller's (a cached shipped config, whose content digest keys the precomputed shapes).
    fields = {
        k: copy.deepcopy(v)
        for k, v in data.items()
        if k not in ("_name_or_path", "transformers_version")
    }
    model_type = fields.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **fields)
        _check_layers(source, config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        return _walk(source, model_type, config, model)
    except PlanningError:
        raise
    except Exception as exc:  # whatever a foreign config.json makes transformers raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlanningError(
            f"spec.baseModel: cannot build a causal LM from config.json {source!r} "
            f"(model_type {model_type!r}): {first_line}"
        ) from None


def _check_layers(source: str, config: Any) -> None:
    """Building costs about 5 ms and 36 KiB per layer: a config from a job author asking for
    millions would hold the planner for hours and exhaust the operator's memory."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text_config, "num_hidden_layers", 0) or 0)
    if layers > MAX_LAYERS:
        raise PlanningError(
            f"spec.baseModel: config.json {source!r} has {layers} decoder layers "
            f"(num_hidden_layers); the memory model counts models of at most {MAX_LAYERS}"
        )


def _walk(source: str, model_type: str, config: Any, model: Any) -> Architecture:
    import torch

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    linears: list[LinearModule] = []
    quantizable = 0
    rows = 0
    output = model.get_output_embeddings()
    head: LinearModule | None = None
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module is output:
                head = LinearModule(module_name, module.in_features, module.out_features)
                continue
            linears.append(LinearModule(module_name, module.in_features, module.out_features))
            quantizable += module.in_features * module.out_features
            rows += module.out_features
    for param_name, param in model.named_parameters():
        if param.dim() == 3 and ".experts." in f".{param_name}":
            experts, out_features, in_features = param.shape
            quantizable += param.numel()
            rows += experts * out_features
            linears.extend(_expert_linears(param_name, experts, out_features, in_features))
    total = sum(p.numel() for p in model.parameters())
    layers = int(text_config.num_hidden_layers)
    per_layer = _layer_params(model) or (total // max(layers, 1))
    heads = int(text_config.num_attention_heads)
    hidden = int(text_config.hidden_size)
    head_dim = int(getattr(text_config, "head_dim", None) or hidden // heads)
    gated = any(module.short_name in GATED_MLP_NAMES for module in linears)
    hidden_act = str(
        getattr(text_config, "hidden_act", None)
        or getattr(text_config, "activation_function", None)
        or getattr(text_config, "activation", None)
        or "silu"
    )
    return Architecture(
        source=source,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=int(getattr(text_config, "intermediate_size", 4 * hidden)),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_kv_heads(text_config, heads),
        head_dim=head_dim,
        vocab_size=int(text_config.vocab_size),
        max_position_embeddings=int(getattr(text_config, "max_position_embeddings", 0) or 0),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        num_experts=int(getattr(text_config, "num_local_experts", 0) or 0),
        experts_per_token=int(getattr(text_config, "num_experts_per_tok", 0) or 0),
        total_params=total,
        quantizable_params=quantizable,
        quantizable_rows=rows,
        linears=tuple(linears),
        largest_layer_params=per_layer,
        mlp_gated=gated,
        hidden_act=hidden_act,
        head=head,
    )


def _kv_heads(config: Any, heads: int) -> int:
    """Key/value heads: GQA's `num_key_value_heads`, else multi-query (Falcon-7B, StarCoder:
    one), else Falcon's `num_kv_heads` for its new decoder, else one per query head."""
    explicit = getattr(config, "num_key_value_heads", None)
    if explicit:
        return int(explicit)
    if getattr(config, "new_decoder_architecture", False) and getattr(config, "num_kv_heads", None):
        return int(config.num_kv_heads)
    if getattr(config, "multi_query", False):
        return 1
    return heads


def _expert_linears(
    param_name: str, experts: int, out_features: int, in_features: int
) -> list[LinearModule]:
    """A fused expert weight as adaptable pieces; gate_up_proj is also reachable as w1/w3."""
    base = param_name.rsplit(".", 1)[0]
    short = param_name.rsplit(".", 1)[-1]
    pieces = [LinearModule(f"{base}.{short}", in_features, out_features, experts)]
    if short == "gate_up_proj":
        half = out_features // 2
        pieces += [LinearModule(f"{base}.{w}", in_features, half, experts) for w in ("w1", "w3")]
    elif short == "down_proj":
        pieces.append(LinearModule(f"{base}.w2", in_features, out_features, experts))
    return pieces


def _layer_params(model: Any) -> int:
    """Parameters of the largest decoder layer (what ZeRO-3 gathers at once)."""
    import torch

    best = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            best = max(best, max(sum(p.numel() for p in layer.parameters()) for layer in module))
    return best
