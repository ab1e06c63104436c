"""DoRA's memory terms against PEFT's DoRA code path, measured on the CPU.

One bf16 linear wrapped by PEFT (fp32 adapters, the trainer's default) runs one forward as LoRA
and as DoRA, with and without bf16 autocast and dropout. Measured:
- saved: the bytes of the tensors a saved-tensors hook sees that are still alive after the
  forward (weak references; the weight-norm graph PEFT builds is freed when the forward returns,
  so its saves do not count), parameters and the input excluded; DoRA minus LoRA.
- transient: the peak of live bytes inside `DoraLinearLayer.forward` above its entry, from a
  dispatch mode that tracks every storage an op returns until it is freed.
The expected values below are written out from the shapes, independently of `memory/dora.py`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lora_operator.memory import dora

LORAJOB = str(Path(sys.executable).with_name("lorajob"))
RANK = 8
# (in, out, tokens): the weight phase dominates the first two, the token phase the last two
SHAPES = [(384, 128, 4), (128, 384, 4), (32, 64, 4096), (64, 32, 4096)]


class LiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Live bytes of every storage an aten op returned, until it is freed; and their peak."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = id(storage)
                if storage.data_ptr() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


class One(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)  # type: ignore[no-any-return]


def adapted(in_features: int, out_features: int, use_dora: bool, dropout: float) -> Any:
    """As the trainer builds it: bf16 base, PEFT's default fp32 adapters; lora_B non-zero as
    after a step."""
    torch.manual_seed(0)
    base = One(in_features, out_features).to(torch.bfloat16)
    config = peft.LoraConfig(
        r=RANK, lora_alpha=16, target_modules=["lin"], lora_dropout=dropout, use_dora=use_dora
    )
    model = peft.get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    model.train()
    return model


def autocast(on: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def saved_alive(model: Any, x: torch.Tensor, amp: bool) -> int:
    """Bytes of the distinct saved tensors alive after one forward (parameters, input out)."""
    excluded = {p.untyped_storage().data_ptr() for p in model.parameters()}
    excluded.add(x.untyped_storage().data_ptr())
    packed: list[tuple[weakref.ref[torch.Tensor], int, int]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        packed.append((weakref.ref(tensor), storage.data_ptr(), storage.nbytes()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(amp):
        out = model(x)
    alive = {ptr: n for ref, ptr, n in packed if ref() is not None and ptr not in excluded}
    del out
    return sum(alive.values())


def dora_forward_peak(model: Any, x: torch.Tensor, amp: bool) -> int:
    """Peak live bytes inside DoraLinearLayer.forward, above what was live at its entry."""
    layer = next(m for n, m in model.named_modules() if n.endswith("lora_magnitude_vector.default"))
    seen: dict[str, int] = {}
    with LiveBytes() as live:

        def enter(*_: Any) -> None:
            seen["entry"] = live.current
            live.peak = live.current

        def leave(*_: Any) -> None:
            seen["peak"] = live.peak - seen["entry"]

        layer.register_forward_pre_hook(enter)
        layer.register_forward_hook(leave)
        with autocast(amp):
            model(x)
    return seen["peak"]


def dtypes(amp: bool) -> dora.DoraDtypes:
    return dora.DoraDtypes(compute=2.0, adapter=4.0, autocast=amp)


@pytest.mark.parametrize("amp", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize(("i", "o", "tokens"), SHAPES)
def test_dora_saves_what_the_formula_says(
    i: int, o: int, tokens: int, dropout: float, amp: bool
) -> None:
    x = torch.randn(1, tokens, i, dtype=torch.bfloat16, requires_grad=True)
    measured = saved_alive(adapted(i, o, True, dropout), x, amp) - saved_alive(
        adapted(i, o, False, dropout), x, amp
    )
    matmul = 2 if amp else 4  # the adapters' matmul dtype: autocast's bf16, or their fp32
    # base_result (the base output, or with dropout F.linear's on the dropped input) and
    # lora_result, T x o each; the three o-sized fp32 scale vectors; with dropout the base
    # weight copy F.linear keeps for the input's gradient
    expected = tokens * o * ((matmul if dropout else 2) + matmul) + 3 * o * 4
    if dropout:
        expected += o * i * matmul
    assert measured == expected
    assert dora.saved_bytes(i, o, tokens, dropout > 0, dtypes(amp)) == expected


@pytest.mark.parametrize("amp", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize(("i", "o", "tokens"), SHAPES)
def test_dora_forward_peak_matches_its_two_phases(
    i: int, o: int, tokens: int, dropout: float, amp: bool
) -> None:
    x = torch.randn(1, tokens, i, dtype=torch.bfloat16, requires_grad=True)
    measured = dora_forward_peak(adapted(i, o, True, dropout), x, amp)
    m = 2 if amp else 4
    # weight phase, at W + s*BA: identity (i x i, as lora_A saved it), the fp32 delta, the fp32
    # base weight copy, s*BA and the sum (o x i fp32 each); eye @ A^T and A/B's casts (rank-wide)
    weight = i * i * m + 4 * o * i * 4 + (2 * i + o) * RANK * m
    # token phase, at the scaling products: identity, delta and weight copy still referenced,
    # three fp32 T x o products, plus what the module creates and saves here (counted by other
    # terms): autocast's bf16 copy of x, lora_A's output, lora_result, and with dropout
    # F.linear's output and (autocast) its bf16 weight copy
    created = tokens * RANK * m + tokens * o * m + (tokens * i * 2 if amp else 0)
    if dropout:
        created += tokens * o * m + (o * i * 2 if amp else 0)
    token = i * i * m + 2 * o * i * 4 + 3 * tokens * o * 4 + created
    expected = max(weight, token)
    # the rest: the o-sized scale vectors and, in the token phase, the rank-wide casts
    assert expected <= measured <= expected + 8 * o * 4 + (2 * i + o) * RANK * m
    formula = dora.transient_bytes(i, o, RANK, tokens, dtypes(amp))
    assert formula == max(weight, token - created)


def test_transient_counts_only_beyond_the_loss_buffers() -> None:
    assert dora.transient_at_peak(5.0, 3.0) == 2.0
    assert dora.transient_at_peak(3.0, 5.0) == 0.0
    assert dora.transient_at_peak(3.0, 3.0) == 0.0


JOB = """\
apiVersion: finetune.lora-operator.io/v1alpha1
kind: LoRAJob
metadata: {name: dora-3b}
spec:
  baseModel: {name: meta-llama/Llama-3.2-3B, source: hf://meta-llama/Llama-3.2-3B}
  dataset: {source: s3://data/train.jsonl, format: chat, maxSeqLength: 1024}
  lora: {r: 16, alpha: 32, dropout: 0.05, targetModules: [q_proj, v_proj, down_proj], useDora: DORA}
  training: {microBatchSize: 2, gradientCheckpointing: true}
  resources: {gpuType: H100-80GB}
  output: {bucket: results}
"""
GIB = 1024**3


def plan(tmp_path: Path, use_dora: bool, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"job-{use_dora}.yaml"
    path.write_text(JOB.replace("DORA", str(use_dora).lower()))
    return subprocess.run(
        [LORAJOB, "plan", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plan_shows_the_dora_terms_and_their_cost(tmp_path: Path) -> None:
    table = plan(tmp_path, True)
    assert table.returncode == 0, table.stderr
    for term in ("dora_magnitude", "dora_activations", "dora_transient"):
        assert term in table.stdout
    assert "dora_" not in plan(tmp_path, False).stdout
    lora = json.loads(plan(tmp_path, False, "-o", "json").stdout)["plan"]
    with_dora = json.loads(plan(tmp_path, True, "-o", "json").stdout)["plan"]
    assert with_dora["gpuType"] == lora["gpuType"] and with_dora["nodes"] == lora["nodes"]
    # Llama 3.2 3B: 28 layers, q 3072 -> 3072, v 3072 -> 1024, down 8192 -> 3072; 2 x 1024
    # tokens, checkpointed (one layer's saved tensors), dropout on, bf16 autocast, fp32 adapters
    tokens, h, layers, vocab = 2048, 3072, 28, 128256
    modules = [(h, h), (h, 1024), (8192, h)]  # (in, out)
    magnitude = layers * sum(o for _, o in modules) * (4 + 4 + 8)  # fp32 weight, grad, 2 moments
    saved = sum(tokens * o * (2 + 2) + o * i * 2 + 3 * o * 4 for i, o in modules)
    # down_proj's weight phase is the largest: identity 8192^2 bf16, four fp32 o x i matrices
    down_weight_phase = 8192 * 8192 * 2 + 4 * h * 8192 * 4 + (2 * 8192 + h) * 16 * 2
    # the chunked loss: kept hidden states + one chunk of 2^25 // vocab positions' buffers
    loss = tokens * h * 2 + (2**25 // vocab) * vocab * 12
    transient = down_weight_phase - loss
    assert transient > 0
    breakdown = with_dora["breakdownGib"]
    assert breakdown["dora_magnitude"] == pytest.approx(magnitude / GIB, abs=1e-3)
    assert breakdown["dora_activations"] == pytest.approx(saved / GIB, abs=1e-3)
    assert breakdown["dora_transient"] == pytest.approx(transient / GIB, abs=1e-3)
    # the magnitudes are part of the adapter states LoRA has too; the rest is new, plus 5%
    added = (magnitude + saved + transient) * 1.05 / GIB
    assert with_dora["perGpuPeakGib"] - lora["perGpuPeakGib"] == pytest.approx(added, abs=0.011)
