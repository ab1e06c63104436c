"""lora_trainer.offload, fast: which path each (flag, device) pair takes, and that the context
the trainer steps under really takes the saved tensors (a spy on its pack hook counts them and
says where each packed copy lives), while the `off` path installs no hook at all."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch

from lora_trainer import offload
from lora_trainer.offload import OffloadPath, choose_offload_path, offload_contexts


@pytest.mark.parametrize(
    ("enabled", "on_cuda", "expected"),
    [
        (False, False, OffloadPath.off),
        (False, True, OffloadPath.off),
        (True, False, OffloadPath.save_on_cpu),
        (True, True, OffloadPath.trl),
    ],
)
def test_the_path_for_each_flag_and_device(
    enabled: bool, on_cuda: bool, expected: OffloadPath
) -> None:
    assert choose_offload_path(enabled, on_cuda) is expected


def test_the_paths_are_recorded_under_their_metric_names() -> None:
    """The wire values of metrics.jsonl's `activation_offload` (a contract with its readers:
    the bench tables, test_activation_offloading's metrics check)."""
    assert [p.value for p in OffloadPath] == ["off", "trl-streams", "torch-save-on-cpu"]


def two_saved_products() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x * w saves both inputs (each needs the other's value for its gradient), then the product
    saves both of its inputs: four saved tensors in all, hand-counted."""
    x = torch.arange(6.0).reshape(2, 3).requires_grad_()
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    product = x * w
    return x, w, product * product.detach().requires_grad_()


class PackSpy:
    """Counts what a context's pack hook is given and where the packed copy lives."""

    def __init__(self, context: Any) -> None:
        self.devices: list[str] = []
        original = context.pack_hook

        def spy(tensor: torch.Tensor) -> Any:
            packed = original(tensor)
            stored = packed[1] if isinstance(packed, tuple) else packed
            self.devices.append(stored.device.type)
            return packed

        context.pack_hook = spy  # saved_tensors_hooks pushes this attribute on __enter__


def test_save_on_cpu_packs_every_saved_tensor_to_host_memory() -> None:
    factory = offload_contexts(torch.nn.Linear(2, 2), OffloadPath.save_on_cpu)
    context = factory()
    assert isinstance(context, torch.autograd.graph.save_on_cpu)
    spy = PackSpy(context)
    with context:
        x, w, out = two_saved_products()
    assert spy.devices == ["cpu", "cpu", "cpu", "cpu"]  # x, w, and both sides of the product
    # unpacked from the host copies: the gradients are the plain ones
    out.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and w.grad is not None
    x_value = torch.arange(6.0).reshape(2, 3)
    w_value = torch.tensor([1.0, 2.0, 3.0])
    # d/dx sum((x*w) * c) with c = x*w held constant = w * c = w * (x*w)
    assert torch.equal(x.grad, w_value * (x_value * w_value))
    assert torch.equal(w.grad, (x_value * (x_value * w_value)).sum(0))


def test_save_on_cpu_makes_a_fresh_context_per_step_that_pins_nothing_without_cuda() -> None:
    factory = offload_contexts(torch.nn.Linear(2, 2), OffloadPath.save_on_cpu)
    first, second = factory(), factory()
    assert first is not second  # a hook context is entered once per training step
    x = torch.ones(3, requires_grad=True)
    with second:
        y = x * x
    # pin_memory=False on a CPU-only machine: the packed tensor is the tensor itself (no pinned
    # copy, which would raise without an accelerator)
    assert y.grad_fn is not None
    assert y.grad_fn._saved_self.data_ptr() == x.data_ptr()  # type: ignore[attr-defined]


def test_off_installs_no_saved_tensor_hook() -> None:
    """The `off` context leaves saved tensors to an outer hook: nothing of its own takes them."""
    context = offload_contexts(torch.nn.Linear(2, 2), OffloadPath.off)()
    assert isinstance(context, nullcontext)
    seen: list[torch.Size] = []

    def outer(tensor: torch.Tensor) -> torch.Tensor:
        seen.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(outer, lambda t: t), context:
        two_saved_products()
    assert sorted(seen) == [torch.Size([2, 3])] * 3 + [torch.Size([3])]


def test_save_on_cpu_takes_what_an_outer_hook_would_have_seen() -> None:
    """The same products under an outer spy: with offloading on, its hooks take every one."""
    context = offload_contexts(torch.nn.Linear(2, 2), OffloadPath.save_on_cpu)()
    seen: list[torch.Size] = []

    def outer(tensor: torch.Tensor) -> torch.Tensor:
        seen.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(outer, lambda t: t), context:
        two_saved_products()
    assert seen == []


def test_the_trl_path_builds_one_manager_with_pinned_memory_and_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRL's OffloadActivations needs an accelerator (torch.accelerator is None on CPU), so
    here its factory is a recorder of the arguments the real one gets; the GPU test
    (test_activation_offloading.py::test_trl_offloading_on_cuda_gives_the_same_gradients)
    runs the real one. One manager serves every step: it hooks lm_head once."""
    import trl.models.activation_offloading as trl_offloading

    calls: list[tuple[Any, dict[str, Any]]] = []
    manager = nullcontext("trl-manager")

    def record(model: Any, **options: Any) -> Any:
        calls.append((model, options))
        return manager

    monkeypatch.setattr(trl_offloading, "get_act_offloading_ctx_manager", record)
    model = torch.nn.Linear(2, 2)
    factory = offload_contexts(model, OffloadPath.trl)
    assert factory() is manager and factory() is manager
    assert calls == [(model, {"use_pin_memory": True, "use_streams": True})]


def test_the_module_does_not_import_trl_for_the_other_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRL's loader is reached only on the CUDA path: the CPU paths work with it broken."""
    import trl.models.activation_offloading as trl_offloading

    def broken(*_: Any, **__: Any) -> Any:
        raise AssertionError("TRL's offloader built for a non-TRL path")

    monkeypatch.setattr(trl_offloading, "get_act_offloading_ctx_manager", broken)
    for path in (OffloadPath.off, OffloadPath.save_on_cpu):
        with offload.offload_contexts(torch.nn.Linear(2, 2), path)():
            two_saved_products()
