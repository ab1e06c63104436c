"""Exact parameter counts from the shipped configs, counted on the meta device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_operator.memory import PlanningError, load_architecture
from lora_operator.memory.estimate import lora_param_count

# Published totals (model cards / safetensors metadata).
KNOWN_TOTALS = {
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
    "meta-llama/Llama-3.1-405B": 405_853_388_800,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mistral-7B-v0.3": 7_248_023_552,  # v0.3 has a 32768 vocabulary
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "Qwen/Qwen2.5-14B": 14_770_033_664,
    "Qwen/Qwen2.5-32B": 32_763_876_352,
    "Qwen/Qwen2.5-72B": 72_706_203_648,
    "google/gemma-2-2b": 2_614_341_888,
    "google/gemma-2-9b": 9_241_705_984,
    "google/gemma-2-27b": 27_227_128_320,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "microsoft/Phi-3-medium-4k-instruct": 13_960_238_080,
}


@pytest.mark.parametrize("name", sorted(KNOWN_TOTALS))
def test_total_parameters_are_exact(name: str) -> None:
    assert load_architecture(name, None).total_params == KNOWN_TOTALS[name]


@pytest.mark.parametrize(
    "alias",
    ["Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "hf://meta-llama/Llama-3.1-8B"],
)
def test_aliases_and_instruct_variants(alias: str) -> None:
    assert load_architecture(alias, None).total_params == 8_030_261_248


def test_lora_counts_match_peft_conventions() -> None:
    arch = load_architecture("meta-llama/Llama-3.1-8B", None)
    # r=16 on q,k,v,o: 32 layers x 16 x ((4096+4096) + (4096+1024)*2 + (4096+4096))
    assert lora_param_count(arch, ("q_proj", "k_proj", "v_proj", "o_proj"), 16, False) == (
        32 * 16 * (8192 + 2 * 5120 + 8192)
    )
    # all-linear adds gate/up/down (4096 <-> 14336) and never lm_head: 41,943,040 (PEFT prints)
    assert lora_param_count(arch, ("all-linear",), 16, False) == 41_943_040


def test_mixtral_experts_are_fused_parameters_counted_per_expert() -> None:
    arch = load_architecture("mistralai/Mixtral-8x7B-v0.1", None)
    attention_only = lora_param_count(arch, ("all-linear",), 8, False)
    assert attention_only == 32 * 8 * (8192 + 2 * 5120 + 8192)
    experts = lora_param_count(arch, ("w1", "w2", "w3"), 8, False)
    assert experts == 32 * 8 * 3 * 8 * (4096 + 14336)
    # nearly all of Mixtral is quantizable expert/attention weights
    assert arch.quantizable_params / arch.total_params > 0.99


def test_phi3_fused_projections_are_named() -> None:
    arch = load_architecture("microsoft/Phi-3-mini-4k-instruct", None)
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} <= set(arch.module_names)
    with pytest.raises(PlanningError, match=r"spec.lora.targetModules: .*qkv_proj"):
        lora_param_count(arch, ("q_proj",), 8, False)


def test_local_config_path_and_directory(tiny_config: Path, tiny_llama: dict[str, Any]) -> None:
    by_file = load_architecture("anything", str(tiny_config))
    by_dir = load_architecture("anything", str(tiny_config.parent))
    h, i, v = tiny_llama["hidden_size"], tiny_llama["intermediate_size"], tiny_llama["vocab_size"]
    kv = 2 * 16  # 2 kv heads x head_dim 16
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    assert by_file.total_params == by_dir.total_params == 2 * per_layer + 2 * v * h + h


def test_unknown_model_names_the_field() -> None:
    with pytest.raises(PlanningError, match=r"^spec.baseModel.name: unknown model 'foo/bar'"):
        load_architecture("foo/bar", None)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match=r"^spec.baseModel.config: config file .* not found"):
        load_architecture("x", str(tmp_path / "nope.json"))


def test_malformed_and_foreign_configs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanningError, match="not valid JSON"):
        load_architecture("x", str(bad))
    bad.write_text('{"hidden_size": 4}')
    with pytest.raises(PlanningError, match="no 'model_type'"):
        load_architecture("x", str(bad))
    bad.write_text('{"model_type": "no-such-arch"}')
    with pytest.raises(PlanningError, match=r"^spec.baseModel: cannot build a causal LM"):
        load_architecture("x", str(bad))


def test_unreachable_url_fails_clearly() -> None:
    with pytest.raises(PlanningError, match=r"^spec.baseModel.config: cannot fetch"):
        load_architecture("x", "http://127.0.0.1:9/config.json")


def _write(tmp_path: Path, name: str, config: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_gated_and_plain_mlps_are_told_apart(tmp_path: Path) -> None:
    """SwiGLU models (gate/up/down, Phi-3's fused gate_up, Mixtral's experts) save more MLP
    activations than fc1 -> act -> fc2 models (Phi-2, GPT-NeoX), so the estimate needs to know."""
    assert load_architecture("meta-llama/Llama-3.1-8B", None).mlp_gated
    assert load_architecture("microsoft/Phi-3-mini-4k-instruct", None).mlp_gated
    assert load_architecture("mistralai/Mixtral-8x7B-v0.1", None).mlp_gated
    phi2 = {
        "model_type": "phi",
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "hidden_act": "gelu_new",
    }
    arch = load_architecture("phi-2-like", _write(tmp_path, "phi", phi2))
    assert not arch.mlp_gated and arch.hidden_act == "gelu_new"


def test_multi_query_attention_has_one_kv_head(tmp_path: Path) -> None:
    falcon = {
        "model_type": "falcon",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "vocab_size": 100,
        "multi_query": True,
        "new_decoder_architecture": False,
    }
    assert load_architecture("falcon-like", _write(tmp_path, "mqa", falcon)).num_kv_heads == 1
    grouped = {**falcon, "new_decoder_architecture": True, "num_kv_heads": 2}
    assert load_architecture("falcon-40b-like", _write(tmp_path, "gqa", grouped)).num_kv_heads == 2
    assert load_architecture("meta-llama/Llama-3.1-8B", None).num_kv_heads == 8


def test_lm_head_is_adapted_only_by_name() -> None:
    """PEFT adapts lm_head when it is named (LitGPT's lora_head, torchtune's
    apply_lora_to_output); all-linear leaves it out."""
    arch = load_architecture("meta-llama/Llama-3.1-8B", None)
    assert "lm_head" in arch.module_names
    assert lora_param_count(arch, ("lm_head",), 8, False) == 8 * (4096 + 128256)
    all_linear = lora_param_count(arch, ("all-linear",), 8, False)
    named = arch.module_names
    assert lora_param_count(arch, tuple(named), 8, False) == all_linear + 8 * (4096 + 128256)


def test_a_local_config_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    """`lorajob plan` reads local files, but no bigger than the operator would take."""
    from lora_operator.memory.local_config import MAX_BYTES

    big = tmp_path / "config.json"
    big.write_text(" " * MAX_BYTES + '{"model_type": "llama"}')
    with pytest.raises(PlanningError, match=rf"is larger than {MAX_BYTES} bytes"):
        load_architecture("x", str(big))


def test_a_config_asking_for_absurdly_many_layers_is_refused_before_building(
    tmp_path: Path,
) -> None:
    """A config.json comes from job authors: millions of layers would take the planner hours."""
    huge = {**json.loads(_llama_text()), "num_hidden_layers": 2_000_000}
    with pytest.raises(PlanningError, match=r"has 2000000 decoder layers \(num_hidden_layers\)"):
        load_architecture("x", _write(tmp_path, "huge", huge))
    broken = {**json.loads(_llama_text()), "num_attention_heads": 0}
    with pytest.raises(PlanningError, match=r"^spec.baseModel: cannot build a causal LM"):
        load_architecture("x", _write(tmp_path, "broken", broken))


def _llama_text() -> str:
    from lora_operator.memory.registry import shipped_config_path

    path = shipped_config_path("meta-llama/Llama-3.2-1B")
    assert path is not None
    return path.read_text()
