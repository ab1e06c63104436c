"""serving_compat: each refusal vLLM would make (PEFTHelper.validate_legal) or that a wrong base
model would cause, named by field, from the spec and from the adapter_config.json the trainer
wrote; and the adapters that pass. Expected values are written out by hand."""

from __future__ import annotations

from typing import Any

import pytest
from operator_harness import base_job

from lora_contract.types import LoRAJobSpec
from lora_operator.api.loading import parse_lorajob
from lora_operator.controller.serving_compat import (
    Incompatibility,
    adapter_problem,
    allowed_targets,
    shipped_model_type,
    spec_problem,
)

LLAMA = "meta-llama/Llama-3.2-1B"


def spec(**overrides: Any) -> LoRAJobSpec:
    return parse_lorajob(base_job("compat", **overrides)).spec


def adapter(**overrides: Any) -> dict[str, Any]:
    """What PEFT writes for base_job's spec once the trainer put the hub name in."""
    config: dict[str, Any] = {
        "base_model_name_or_path": LLAMA,
        "revision": None,
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["v_proj", "q_proj", "o_proj", "k_proj"],
        "modules_to_save": None,
        "use_dora": False,
        "bias": "none",
    }
    config.update(overrides)
    return config


def test_the_default_spec_and_its_adapter_serve() -> None:
    assert spec_problem(spec(), "llama", 8) is None
    assert adapter_problem(adapter(), spec(), "llama", 8) is None


def test_shipped_model_types_come_from_the_shipped_configs() -> None:
    assert shipped_model_type(LLAMA) == "llama"
    assert shipped_model_type("microsoft/Phi-3-mini-4k-instruct") == "phi3"
    assert shipped_model_type("acme/not-shipped") is None


# ----------------------------------------------------------------------------- from the spec


def test_rank_above_the_servers_max_is_refused_naming_lora_r() -> None:
    problem = spec_problem(spec(**{"lora.r": 24}), "llama", 16)
    assert problem == Incompatibility("lora.r", "rank 24 is above the server's --max-lora-rank 16")


def test_rank_equal_to_the_servers_max_serves() -> None:
    assert spec_problem(spec(**{"lora.r": 16}), "llama", 16) is None
    assert spec_problem(spec(**{"lora.r": 12}), "llama", 16) is None  # vLLM pads up to 16


def test_a_max_lora_rank_vllm_does_not_accept_is_refused() -> None:
    problem = spec_problem(spec(), "llama", 12)
    assert problem is not None and problem.field == "--max-lora-rank"
    assert problem.message == "12 is not one vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512)"


def test_dora_is_refused_naming_lora_use_dora() -> None:
    problem = spec_problem(spec(**{"lora.useDora": True}), "llama", 8)
    assert str(problem) == "lora.useDora: vLLM serves no DoRA adapter"


def test_bias_is_refused_naming_lora_bias() -> None:
    problem = spec_problem(spec(**{"lora.bias": "lora_only"}), "llama", 8)
    assert str(problem) == "lora.bias: vLLM loads no LoRA bias: use bias: none"


def test_embeddings_and_lm_head_are_refused_naming_target_modules() -> None:
    targets = ["q_proj", "embed_tokens", "lm_head"]
    problem = spec_problem(spec(**{"lora.targetModules": targets}), "llama", 8)
    assert problem == Incompatibility(
        "lora.targetModules",
        "vLLM serves no LoRA on embed_tokens, lm_head for model_type llama (supported: "
        "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)",
    )


def test_phi3_takes_its_fused_names_and_not_llamas() -> None:
    fused = spec(**{"lora.targetModules": ["qkv_proj", "gate_up_proj"]})
    assert spec_problem(fused, "phi3", 8) is None
    split = spec_problem(spec(**{"lora.targetModules": ["q_proj"]}), "phi3", 8)
    assert split is not None and split.field == "lora.targetModules"
    assert "q_proj" in split.message and "phi3" in split.message


def test_all_linear_serves_on_llama_but_not_on_mixtral_or_an_unknown_model() -> None:
    everything = spec(**{"lora.targetModules": ["all-linear"]})
    assert spec_problem(everything, "llama", 8) is None
    for model_type in ("mixtral", None):
        problem = spec_problem(everything, model_type, 8)
        assert problem is not None and problem.field == "lora.targetModules"
    assert "model_type unknown" in str(spec_problem(everything, None, 8))


def test_mixtral_experts_are_refused() -> None:
    problem = spec_problem(spec(**{"lora.targetModules": ["q_proj", "w1"]}), "mixtral", 8)
    assert problem is not None and problem.message.startswith("vLLM serves no LoRA on w1 ")


def test_an_unknown_model_type_accepts_only_names_some_table_knows() -> None:
    assert allowed_targets(None) == allowed_targets("never-heard-of") >= {"qkv_proj", "q_proj"}
    assert "lm_head" not in allowed_targets(None)
    assert spec_problem(spec(**{"lora.targetModules": ["q_proj"]}), None, 8) is None


# ------------------------------------------------------------- from the trainer's adapter_config


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"base_model_name_or_path": "/tmp/scratch/base"},
            "adapter_config.json base_model_name_or_path",
            f"'/tmp/scratch/base' is not spec.baseModel.name '{LLAMA}'",
        ),
        (
            {"revision": "v2"},
            "adapter_config.json revision",
            "base model revision 'v2' is not spec.baseModel.revision None",
        ),
        (
            {"modules_to_save": ["lm_head"]},
            "adapter_config.json modules_to_save",
            "vLLM loads no fully trained modules (['lm_head'])",
        ),
        ({"use_dora": True}, "adapter_config.json use_dora", "vLLM serves no DoRA adapter"),
        ({"bias": "all"}, "adapter_config.json bias", "vLLM loads no LoRA bias"),
        (
            {"r": 16},
            "adapter_config.json r",
            "rank 16 is above the server's --max-lora-rank 8",
        ),
        ({"r": "8"}, "adapter_config.json r", "rank '8' is not a positive integer"),
        ({"r": 0}, "adapter_config.json r", "rank 0 is not a positive integer"),
        ({"r": True}, "adapter_config.json r", "rank True is not a positive integer"),
        (
            {"target_modules": {"q_proj": 1}},
            "adapter_config.json target_modules",
            "not a list of names: {'q_proj': 1}",
        ),
        (
            {"target_modules": ["q_proj", "lm_head"]},
            "adapter_config.json target_modules",
            "vLLM serves no LoRA on lm_head for model_type llama (supported: down_proj, "
            "gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)",
        ),
    ],
)
def test_each_adapter_refusal_names_its_key(
    overrides: dict[str, Any], field: str, message: str
) -> None:
    assert adapter_problem(adapter(**overrides), spec(), "llama", 8) == Incompatibility(
        field, message
    )


def test_a_missing_base_model_name_is_refused() -> None:
    config = adapter()
    del config["base_model_name_or_path"]
    problem = adapter_problem(config, spec(), "llama", 8)
    assert problem is not None and problem.field == "adapter_config.json base_model_name_or_path"


def test_a_pinned_revision_must_match_the_adapters() -> None:
    pinned = spec(**{"baseModel.revision": "abc123"})
    assert adapter_problem(adapter(revision="abc123"), pinned, "llama", 8) is None
    problem = adapter_problem(adapter(), pinned, "llama", 8)
    assert problem is not None and problem.field == "adapter_config.json revision"


def test_a_smaller_adapter_rank_and_empty_modules_to_save_serve() -> None:
    assert adapter_problem(adapter(r=4, modules_to_save=[]), spec(), "llama", 8) is None


def test_a_target_modules_string_is_read_as_one_name() -> None:
    assert adapter_problem(adapter(target_modules="q_proj"), spec(), "llama", 8) is None
    problem = adapter_problem(adapter(target_modules="all-linear"), spec(), "mixtral", 8)
    assert problem is not None and problem.field == "adapter_config.json target_modules"


def test_rank_one_serves_and_a_missing_bias_key_means_none() -> None:
    config = adapter(r=1)
    del config["bias"]
    assert adapter_problem(config, spec(), "llama", 8) is None


def test_the_all_linear_and_unknown_model_messages_in_full() -> None:
    everything = spec(**{"lora.targetModules": ["all-linear"]})
    assert spec_problem(everything, "mixtral", 8) == Incompatibility(
        "lora.targetModules",
        "'all-linear' adapts modules vLLM does not serve for model_type mixtral; list them "
        "from: k_proj, o_proj, q_proj, v_proj",
    )
    problem = spec_problem(spec(**{"lora.targetModules": ["wte"]}), None, 8)
    assert problem is not None
    assert problem.message.startswith("vLLM serves no LoRA on wte for model_type unknown (")
