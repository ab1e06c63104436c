"""`training.activationOffloading` in the plan: the saved activations move from the GPU terms to
host memory (the pod's memory request), and the fit search turns it on when nothing else fits."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import ComputeDtype, LoRAJobSpec, Strategy, TrainingOverrides
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import (
    GpuCatalog,
    TrainingShape,
    estimate_memory,
    load_architecture,
    plan_job,
    shape_for,
)
from lora_operator.memory.estimate import (
    OFFLOAD_GPU_LAYERS,
    OFFLOAD_GPU_TENSORS,
    Assumptions,
    activation_split,
)
from lora_operator.memory.fit import ACTIVATION_OFFLOADING_COST, CHECKPOINTING_COST, candidates

Spec = Callable[..., LoRAJobSpec]
GIB = 1024**3
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_8B = "meta-llama/Llama-3.1-8B"  # 32 layers, hidden 4096


def llama_8b() -> Any:
    return load_architecture(LLAMA_8B, None)


def test_checkpointed_layer_inputs_move_to_host_but_the_offloaders_window() -> None:
    arch = llama_8b()
    shape = TrainingShape(seq_len=2048, micro_batch=2, gradient_checkpointing=True)
    kept, host_off = activation_split(arch, shape, Assumptions())
    moved, host_on = activation_split(
        arch, replace(shape, activation_offloading=True), Assumptions()
    )
    layer_input = 2 * 2048 * 4096 * 2  # tokens x hidden x bf16: 32 MiB per layer
    assert host_off == 0
    final_norm = 2 * 2048 * 4096 * 4  # the final norm's fp32 input moves too
    assert host_on == 32 * layer_input + final_norm  # every checkpointed layer input's copy
    # the GPU keeps the offloader's window of layer inputs, nothing else changes
    assert kept["activations"] - moved["activations"] == (32 - OFFLOAD_GPU_TENSORS) * layer_input
    for term in ("attention_scores", "lora_dropout", "logits"):
        assert moved[term] == kept[term]


def test_without_checkpointing_every_layer_moves_and_two_stay() -> None:
    arch = llama_8b()
    shape = TrainingShape(seq_len=1024, gradient_checkpointing=False, dropout=0.1)
    kept, _ = activation_split(arch, shape, Assumptions())
    moved, host = activation_split(arch, replace(shape, activation_offloading=True), Assumptions())
    share = OFFLOAD_GPU_LAYERS / 32
    ends = 1024 * 2 * 4096 * 4  # embedding output and final norm (fp32) stay on the GPU
    layers = kept["activations"] - ends
    assert moved["activations"] == pytest.approx(layers * share + ends)
    assert moved["lora_dropout"] == pytest.approx(kept["lora_dropout"] * share)
    # the host holds what the GPU held for all 32 layers
    assert host == pytest.approx(layers + kept["lora_dropout"] + ends / 2)  # + final norm's


def test_estimate_lowers_the_gpu_peak_and_raises_host_memory_by_the_moved_bytes() -> None:
    arch = llama_8b()
    shape = TrainingShape(seq_len=8192, micro_batch=2)
    plain = estimate_memory(arch, shape)
    offloaded = estimate_memory(arch, replace(shape, activation_offloading=True))
    _, moved = activation_split(arch, replace(shape, activation_offloading=True), Assumptions())
    assert plain.host_offload_gib == 0
    assert offloaded.host_offload_gib == pytest.approx(moved / GIB)
    assert offloaded.peak_allocated_gib < plain.peak_allocated_gib
    assert any("activation offloading" in note for note in offloaded.notes)


def catalog_with(memory_gib: float) -> GpuCatalog:
    gpu = GpuType.model_validate(
        {"name": "TEST", "memory_gib": memory_gib, "safety_margin_fraction": 0.0}
    )
    return GpuCatalog.default().merged([gpu])


def gi(quantity: str | None) -> int:
    assert quantity is not None and quantity.endswith("Gi")
    return int(quantity[:-2])


def test_shape_for_passes_the_flag_but_not_on_cpu(spec: Spec) -> None:
    job = spec(training={"activationOffloading": True})
    assert shape_for(job, Strategy.ddp, 1).activation_offloading
    # on CPU the saved tensors are host memory already: counted once
    assert not shape_for(job, Strategy.ddp, 1, on_cpu=True).activation_offloading


def test_pod_memory_request_grows_with_the_offloaded_bytes(spec: Spec) -> None:
    pinned = {"gpuType": "TEST"}
    one_gpu = {"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"}
    dataset = {"maxSeqLength": 16384}
    plain = plan_job(
        spec(resources=pinned, distributed=one_gpu, dataset=dataset), catalog_with(141)
    )
    offloaded = plan_job(
        spec(
            resources=pinned,
            distributed=one_gpu,
            dataset=dataset,
            training={"activationOffloading": True},
        ),
        catalog_with(141),
    )
    moved = offloaded.estimate.host_offload_gib
    assert moved > 1.0  # 32 layers x 16k tokens x 4096 x bf16 = 4 GiB
    assert offloaded.estimate.peak_gib < plain.estimate.peak_gib
    grown = gi(offloaded.requests.memory) - gi(plain.requests.memory)
    assert grown == pytest.approx(moved * 1.25, abs=1)  # placement's 25% on offloaded bytes


def test_fit_turns_offloading_on_when_no_other_knob_is_left(spec: Spec) -> None:
    """Micro batch 1, checkpointing and the chunked loss already on: offloading is the only
    maths-preserving knob left, and under `auto` the plan applies it."""
    job = spec(
        resources={"gpuType": "TEST"},
        training={"microBatchSize": 1, "gradientAccumulation": 8},
        dataset={"maxSeqLength": 65536},
        distributed={"nodes": 1, "gpusPerNode": 1},
    )
    arch = load_architecture(job.base_model.name, job.base_model.config)
    as_written_estimate = estimate_memory(arch, shape_for(job, Strategy.ddp, 1))
    as_written = as_written_estimate.peak_gib
    assert as_written_estimate.host_offload_gib == 0  # host memory only once offloading is on
    with_offload = TrainingOverrides(activation_offloading=True).applied_to(job)
    offloaded = estimate_memory(arch, shape_for(with_offload, Strategy.ddp, 1)).peak_gib
    assert offloaded < as_written
    result = plan_job(job, catalog_with((as_written + offloaded) / 2))
    assert result.training_overrides == TrainingOverrides(activation_offloading=True)
    assert result.adjustments == ["training.activationOffloading true (activations in host memory)"]
    assert result.estimate.host_offload_gib > 0
    wire = result.to_status().to_wire()
    assert wire["trainingOverrides"] == {"activationOffloading": True}


# A 6-layer Llama small enough to run on CPU in a second, large enough that every saved tensor
# is above the offloader's 1 KiB floor.
SMALL = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 2000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(("checkpointing", "over"), [(True, 1.001), (False, 1.08)])
def test_host_figure_matches_what_a_saved_tensors_hook_sees(
    tmp_path: Path, checkpointing: bool, over: float
) -> None:
    """The bytes the offloaders' mechanism (torch's saved-tensors hooks) receives in the decoder's
    forward, parameters and tensors under 1 KiB left out as TRL does, against the plan's host
    figure for the same shape (fp32 on CPU, dropout 0)."""
    import peft
    import torch
    import transformers

    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    arch = load_architecture("small-llama", str(path))
    torch.manual_seed(0)
    fields = {k: v for k, v in SMALL.items() if k != "model_type"}
    model = peft.get_peft_model(
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)),
        peft.LoraConfig(r=16, target_modules=list(QKVO), lora_dropout=0.0),
    )
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and tensor.nbytes >= 1024:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(
        0, SMALL["vocab_size"], (2, 512), generator=torch.Generator().manual_seed(0)
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.get_base_model().get_decoder()(input_ids=ids)
    shape = TrainingShape(
        compute_dtype=ComputeDtype.fp32,
        seq_len=512,
        micro_batch=2,
        gradient_checkpointing=checkpointing,
        dropout=0.0,
        activation_offloading=True,
    )
    _, host = activation_split(arch, shape, Assumptions())
    measured = sum(storages.values())
    # never under by more than a few KiB (small index tensors), over by at most `over`
    assert measured * 0.999 <= host <= measured * over


def test_the_search_offers_offloading_only_with_checkpointing(spec: Spec) -> None:
    """Without checkpointing, offloading sends every layer's saved tensors to host memory, which
    the plan cannot check against the node: the search only pairs it with checkpointing."""
    job = spec(training={"microBatchSize": 2, "gradientCheckpointing": False})
    variants = [v for group in candidates(job) for v in group]
    offloaded = [v for v in variants if v.activation_offloading]
    assert offloaded and all(v.gradient_checkpointing for v in offloaded)
    assert offloaded[0].cost == pytest.approx(CHECKPOINTING_COST * ACTIVATION_OFFLOADING_COST)
