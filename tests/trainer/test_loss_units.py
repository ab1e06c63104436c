"""lora_trainer.loss and lora_trainer.gathered_head, fast: hand-worked cross-entropy on a 3-word
vocabulary, the chunk size each path really uses (lm_head calls counted), the reduction, the
path table, the hidden-state capture, and LeanLossTrainer's loss on one batch of a 1-layer
random Llama (no training run: test_chunked_loss.py trains)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers

from lora_trainer import loss as loss_module
from lora_trainer.gathered_head import GatheredHead, gatherable, is_partitioned
from lora_trainer.loss import (
    IGNORE_INDEX,
    HiddenStateCapture,
    LeanLossTrainer,
    LossPath,
    causal_lm_loss,
    causal_lm_of,
    choose_loss_path,
    chunk_positions,
    chunked_cross_entropy_sum,
    fused_kernel_usable,
    gathered_head_for,
    lean_forward_loss,
    normalise,
    shifted_targets,
    skips_logits,
)
from lora_trainer.offload import OffloadPath

# lm_head of a 3-word vocabulary on a 2-wide hidden state: logits = (h0, h1, h0 + h1)
HEAD_WEIGHT = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]


def head(bias: bool = False) -> torch.nn.Linear:
    linear = torch.nn.Linear(2, 3, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(HEAD_WEIGHT))
        if bias:
            linear.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return linear


def by_hand(hidden: list[list[float]], targets: list[int]) -> float:
    """Sum over positions of log(sum(exp(logits))) - logits[target], ignored ones skipped."""
    total = 0.0
    for (a, b), target in zip(hidden, targets, strict=True):
        if target == IGNORE_INDEX:
            continue
        logits = [a, b, a + b]
        total += math.log(sum(math.exp(x) for x in logits)) - logits[target]
    return total


HIDDEN = [[0.5, -1.0], [2.0, 0.0], [0.0, 0.0], [-1.0, 1.5], [1.0, 1.0]]
TARGETS = [2, IGNORE_INDEX, 0, 1, 2]  # four labelled positions


class CountingHead(torch.nn.Linear):
    """lm_head that counts its forward calls (a chunk each, recomputations included)."""

    def __init__(self) -> None:
        super().__init__(2, 3, bias=False)
        with torch.no_grad():
            self.weight.copy_(torch.tensor(HEAD_WEIGHT))
        self.calls: list[int] = []  # positions per call

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls.append(hidden.shape[0])
        return super().forward(hidden)


def test_chunk_positions_by_hand() -> None:
    assert chunk_positions(2**25) == 1
    assert chunk_positions(2**24) == 2
    assert chunk_positions(3) == 11_184_810  # 33_554_432 // 3
    assert chunk_positions(2**26) == 1  # never zero positions
    assert chunk_positions(0) == 2**25  # a zero vocabulary does not divide by zero
    assert chunk_positions(-4) == 2**25


def test_shifted_targets_predict_the_next_label_and_nothing_at_the_end() -> None:
    labels = torch.tensor([[5, 6, 7], [IGNORE_INDEX, 8, 9]])
    assert shifted_targets(labels).tolist() == [[6, 7, -100], [8, 9, -100]]
    assert shifted_targets(torch.tensor([4])).tolist() == [-100]


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 100])
def test_chunked_sum_is_the_hand_worked_cross_entropy_for_any_chunk(chunk: int) -> None:
    hidden = torch.tensor(HIDDEN)
    got = chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), head(), chunk)
    assert got.item() == pytest.approx(by_hand(HIDDEN, TARGETS), rel=1e-6)


def test_the_bias_is_part_of_the_projection() -> None:
    hidden = torch.tensor(HIDDEN)
    got = chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), head(bias=True), 2)
    shifted = [[a, b] for a, b in HIDDEN]  # bias (0, 0, 1): the third logit is a + b + 1
    expected = 0.0
    for (a, b), target in zip(shifted, TARGETS, strict=True):
        if target != IGNORE_INDEX:
            logits = [a, b, a + b + 1]
            expected += math.log(sum(math.exp(x) for x in logits)) - logits[target]
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("chunk", "forward_calls", "backward_calls"),
    [
        (1, [1, 1, 1, 1], [1, 1, 1, 1]),  # four chunks, each recomputed in backward
        (3, [3, 1], [1, 3]),  # backward runs the chunks last to first
        (4, [4], []),  # exactly one chunk: its buffers live into backward, no recompute
        (9, [4], []),
    ],
)
def test_only_several_chunks_are_recomputed_in_backward(
    chunk: int, forward_calls: list[int], backward_calls: list[int]
) -> None:
    counting = CountingHead()
    hidden = torch.tensor(HIDDEN, requires_grad=True)
    total = chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), counting, chunk)
    assert counting.calls == forward_calls  # only the 4 labelled positions are projected
    total.backward()  # type: ignore[no-untyped-call]
    assert counting.calls == forward_calls + backward_calls
    assert hidden.grad is not None and hidden.grad[1].abs().sum().item() == 0.0  # ignored row


def test_a_trainable_head_gets_its_gradient_through_recomputed_chunks() -> None:
    """lm_head the only LoRA target: the hidden states need no gradient, the head does. The
    chunks' checkpoint must still carry it (a reentrant checkpoint would drop it: none of its
    inputs requires grad)."""
    hidden = torch.tensor(HIDDEN)
    chunked_head, plain_head = head(), head()
    chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), chunked_head, 1).backward()  # type: ignore[no-untyped-call]
    chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), plain_head, 100).backward()  # type: ignore[no-untyped-call]
    assert plain_head.weight.grad is not None and chunked_head.weight.grad is not None
    assert plain_head.weight.grad.abs().sum().item() > 0
    assert torch.allclose(chunked_head.weight.grad, plain_head.weight.grad)


def test_without_gradients_nothing_is_checkpointed() -> None:
    counting = CountingHead()
    hidden = torch.tensor(HIDDEN, requires_grad=True)
    with torch.no_grad():
        chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), counting, 1)
    assert counting.calls == [1, 1, 1, 1]


def test_a_chunk_is_upcast_to_fp32_like_the_stock_loss() -> None:
    bf16_head = head().to(torch.bfloat16)
    hidden = torch.tensor(HIDDEN, dtype=torch.bfloat16)
    got = chunked_cross_entropy_sum(hidden, torch.tensor(TARGETS), bf16_head, 2)
    assert got.dtype == torch.float32


def test_nothing_labelled_sums_to_zero_connected_to_the_graph() -> None:
    hidden = torch.tensor(HIDDEN, requires_grad=True)
    nothing = torch.full((5,), IGNORE_INDEX)
    total = chunked_cross_entropy_sum(hidden, nothing, head(), 2)
    assert total.item() == 0.0 and total.requires_grad
    total.backward()  # type: ignore[no-untyped-call]
    assert hidden.grad is not None and hidden.grad.abs().sum().item() == 0.0


def test_normalise_divides_by_the_batch_count_or_the_labelled_positions() -> None:
    total = torch.tensor(6.0)
    targets = torch.tensor([1, IGNORE_INDEX, 2, 0])  # three labelled
    assert normalise(total, targets, None).item() == 2.0
    assert normalise(total, targets, 4).item() == 1.5
    assert normalise(total, targets, torch.tensor(12)).item() == 0.5


def test_causal_lm_loss_shifts_the_labels_and_takes_the_mean() -> None:
    hidden = torch.tensor([HIDDEN])
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 0, 1]])  # shifted: TARGETS[:4] + end
    shifted = [2, IGNORE_INDEX, 0, 1, IGNORE_INDEX]
    expected = by_hand(HIDDEN, shifted) / 3
    assert causal_lm_loss(hidden, labels, head(), chunk=2).item() == pytest.approx(expected)
    with_count = causal_lm_loss(hidden, labels, head(), num_items_in_batch=6, chunk=2)
    assert with_count.item() == pytest.approx(by_hand(HIDDEN, shifted) / 6)


def test_the_default_chunk_comes_from_the_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    """12 logit elements a chunk over a 3-word vocabulary: 4 positions, so 6 labels make
    chunks of 4 and 2."""
    monkeypatch.setattr(loss_module, "CHUNK_LOGIT_ELEMENTS", 12)
    counting = CountingHead()
    hidden = torch.zeros(1, 7, 2)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2, 0]])
    with torch.no_grad():
        causal_lm_loss(hidden, labels, counting)
    assert counting.calls == [4, 2]
    counting.calls.clear()
    with torch.no_grad():
        causal_lm_loss(hidden, labels, counting, chunk=5)
    assert counting.calls == [5, 1]


def tiny_llama(**config: Any) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    options: dict[str, Any] = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
        "tie_word_embeddings": False,
    }
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(options | config)))


def with_lora(model: Any, targets: tuple[str, ...] = ("q_proj",)) -> Any:
    return peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=list(targets)))


def test_causal_lm_of_unwraps_peft_and_leaves_a_plain_model() -> None:
    base = tiny_llama()
    assert causal_lm_of(base) is base
    assert causal_lm_of(with_lora(base)) is base


def test_skips_logits_needs_logits_to_keep_a_decoder_a_head_and_no_transform() -> None:
    model = tiny_llama()
    assert skips_logits(model)
    model.config.logit_scale = 1.0  # an identity transform is no transform
    assert skips_logits(model)
    model.config.logit_scale = 1
    assert skips_logits(model)
    model.config.logit_scale = None
    assert skips_logits(model)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        changed = tiny_llama()
        setattr(changed.config, name, 0.5)
        assert not skips_logits(changed), name

    class NoKeep(torch.nn.Module):
        config = model.config

        def forward(self, input_ids: Any) -> Any:
            return input_ids

        def get_decoder(self) -> Any:
            return self

        def get_output_embeddings(self) -> Any:
            return torch.nn.Linear(2, 2)

    assert not skips_logits(NoKeep())

    class Keeps(NoKeep):
        def forward(self, input_ids: Any, logits_to_keep: Any = 0) -> Any:
            return input_ids

    assert skips_logits(Keeps())

    class PlainConfig:  # a config without get_text_config: read as it is
        logit_scale = None

    class KeepsPlain(Keeps):
        config = PlainConfig()

    assert skips_logits(KeepsPlain())
    PlainConfig.logit_scale = 2.0  # type: ignore[assignment]
    assert not skips_logits(KeepsPlain())

    class NoHead(Keeps):
        def get_output_embeddings(self) -> Any:
            return None

    assert not skips_logits(NoHead())

    class Bare(torch.nn.Module):
        config = model.config

        def forward(self, input_ids: Any, logits_to_keep: Any = 0) -> Any:
            return input_ids

        def get_output_embeddings(self) -> Any:
            return torch.nn.Linear(2, 2)

    assert not skips_logits(Bare())


def test_the_text_config_of_a_composite_config_is_read() -> None:
    model = tiny_llama()

    class Composite:
        def __init__(self, text: Any) -> None:
            self.text = text
            self.logit_scale = 3.0  # the outer config's own field is not the text model's

        def get_text_config(self) -> Any:
            return self.text

    model.config = Composite(model.config)  # type: ignore[assignment]
    assert skips_logits(model)
    model.config.text.final_logit_softcapping = 30.0
    assert not skips_logits(model)


def test_the_fused_kernel_needs_cuda() -> None:
    frozen = torch.nn.Linear(4, 8, bias=False).requires_grad_(False)
    assert torch.cuda.is_available() or not fused_kernel_usable(frozen)


def test_loss_path_table_on_cpu() -> None:
    plain = with_lora(tiny_llama())
    assert choose_loss_path(plain, chunked_loss=True) is LossPath.chunked
    assert choose_loss_path(plain, chunked_loss=False) is LossPath.standard
    assert choose_loss_path(plain, chunked_loss=True, zero3=True) is LossPath.chunked
    assert choose_loss_path(plain, chunked_loss=False, zero3=True) is LossPath.standard
    adapted_head = with_lora(tiny_llama(), ("q_proj", "lm_head"))
    assert choose_loss_path(adapted_head, chunked_loss=True, zero3=True) is LossPath.standard
    assert choose_loss_path(adapted_head, chunked_loss=True) is LossPath.chunked
    capped = with_lora(tiny_llama(final_logit_softcapping=30.0))
    assert choose_loss_path(capped, chunked_loss=True) is LossPath.standard
    assert choose_loss_path(capped, chunked_loss=True, zero3=True) is LossPath.standard


def test_loss_paths_keep_their_metric_names() -> None:
    """The wire values of metrics.jsonl's `loss_path` (test_train.py reads "chunked")."""
    assert [p.value for p in LossPath] == ["standard", "chunked", "fused-liger"]


def test_the_capture_keeps_the_decoders_output_only_while_active() -> None:
    model = tiny_llama()
    decoder = model.get_decoder()  # type: ignore[no-untyped-call]
    capture = HiddenStateCapture(decoder)
    ids = torch.tensor([[1, 2, 3]])
    with capture.active():
        expected = decoder(input_ids=ids).last_hidden_state
        taken = capture.take()
        assert torch.equal(taken, expected)
        with pytest.raises(RuntimeError, match="the decoder did not run"):
            capture.take()  # taken once: the next loss needs the next forward
        decoder(input_ids=ids)
    assert capture.hidden is None  # leaving drops a forward's state not taken
    decoder(input_ids=ids)
    assert capture.hidden is None  # and the hook is gone
    with pytest.raises(RuntimeError) as info:
        capture.take()
    assert str(info.value) == "the decoder did not run: no hidden state to compute the loss on"
    with pytest.raises(RuntimeError):
        HiddenStateCapture(decoder).take()  # a capture never active holds nothing


def test_the_capture_takes_the_first_element_of_a_tuple_output() -> None:
    class TupleDecoder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x * 3

    decoder = TupleDecoder()
    capture = HiddenStateCapture(decoder)
    with capture.active():
        decoder(torch.ones(2))
        assert capture.take().tolist() == [2.0, 2.0]


@pytest.mark.parametrize("path", [LossPath.chunked, LossPath.standard])
def test_lean_forward_loss_equals_the_models_own_loss(path: LossPath) -> None:
    model = with_lora(tiny_llama())
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 9, 3, 7, 2]])
    stock = model(input_ids=ids, labels=labels).loss
    got = lean_forward_loss(model, ids, labels, path)
    assert got.item() == pytest.approx(stock.item(), rel=1e-6)


def test_lean_forward_loss_computes_no_logits() -> None:
    model = with_lora(tiny_llama())
    lm_head = causal_lm_of(model).get_output_embeddings()
    shapes: list[torch.Size] = []
    hook = lm_head.register_forward_hook(lambda _m, _a, out: shapes.append(out.shape))
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 9, 3, 7, 2]])
    with torch.no_grad():
        lean_forward_loss(model, ids, labels, LossPath.chunked)
    hook.remove()
    # the model's own forward projects zero positions; the loss the 4 labelled after the shift
    assert shapes == [torch.Size([1, 0, 32]), torch.Size([4, 32])]


def frozen_head() -> torch.nn.Linear:
    return torch.nn.Linear(2, 3, bias=False).requires_grad_(False)


def test_a_gathered_head_only_for_the_chunked_loss_under_zero3() -> None:
    assert gathered_head_for(frozen_head(), LossPath.standard, zero3=True) is None
    assert gathered_head_for(frozen_head(), LossPath.chunked, zero3=False) is None
    assert gathered_head_for(frozen_head(), LossPath.fused, zero3=True) is None
    lm_head = frozen_head()
    gathered = gathered_head_for(lm_head, LossPath.chunked, zero3=True)
    assert isinstance(gathered, GatheredHead) and gathered.head is lm_head
    assert gathered.vocab == 3 and gathered.gathers == 0


def test_a_partitioned_weight_is_gathered_without_the_zero3_flag() -> None:
    lm_head = frozen_head()
    lm_head.weight.ds_id = 7  # type: ignore[attr-defined]  # how DeepSpeed tags its params
    assert is_partitioned(lm_head.weight) and not is_partitioned(frozen_head().weight)
    assert isinstance(gathered_head_for(lm_head, LossPath.chunked, zero3=False), GatheredHead)


def test_a_trainable_or_adapted_head_under_zero3_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        gathered_head_for(torch.nn.Linear(2, 3), LossPath.chunked, zero3=True)
    assert str(info.value) == (
        "the chunked loss under ZeRO-3 needs a frozen plain nn.Linear lm_head"
    )


def test_the_gathered_head_says_what_it_gathers(capsys: pytest.CaptureFixture[str]) -> None:
    gathered_head_for(frozen_head(), LossPath.chunked, zero3=True)
    assert capsys.readouterr().err == (
        "[lora-trainer] chunked loss under ZeRO-3: lm_head's 3 x 2 weight is gathered around "
        "each micro-batch's loss forward and backward\n"
    )


def test_gatherable_needs_every_parameter_frozen() -> None:
    lm_head = torch.nn.Linear(2, 3, bias=True)
    lm_head.weight.requires_grad_(False)
    assert not gatherable(lm_head)  # the bias still trains
    lm_head.bias.requires_grad_(False)
    assert gatherable(lm_head)


def test_the_gathered_projection_and_one_gather_without_a_backward() -> None:
    lm_head = head(bias=True).requires_grad_(False)
    gathered = GatheredHead(lm_head)
    assert gathered.params == [lm_head.weight, lm_head.bias]
    no_bias = frozen_head()
    assert GatheredHead(no_bias).params == [no_bias.weight]  # no None for a missing bias
    x = torch.tensor([[1.0, 2.0]])
    assert gathered.project(x).tolist() == [[1.0, 2.0, 4.0]]
    seen: list[bool] = []

    def chunks(selected: torch.Tensor, recompute: bool) -> torch.Tensor:
        seen.append(recompute)
        return selected.sum()

    hidden = torch.tensor(HIDDEN)  # no gradient wanted: no backward gather, no checkpointing
    assert gathered.loss_sum(hidden, chunks).item() == pytest.approx(sum(map(sum, HIDDEN)))
    assert seen == [False] and gathered.gathers == 1
    with torch.no_grad():
        gathered.loss_sum(hidden.requires_grad_(), chunks)
    assert seen == [False, False] and gathered.gathers == 2
    gathered.close_after_backward()  # nothing open: nothing to close
    assert gathered._backward is None


def test_the_gathered_backward_gathers_once_and_closes() -> None:
    gathered = GatheredHead(head().requires_grad_(False))
    hidden = torch.tensor(HIDDEN, requires_grad=True)
    targets = torch.tensor(TARGETS)
    total = chunked_cross_entropy_sum(hidden, targets, gathered.head, 1, gathered)
    assert gathered.gathers == 1
    assert total.item() == pytest.approx(by_hand(HIDDEN, TARGETS), rel=1e-6)
    total.backward()  # type: ignore[no-untyped-call]
    assert gathered.gathers == 2 and gathered._backward is None
    plain = torch.tensor(HIDDEN, requires_grad=True)
    chunked_cross_entropy_sum(plain, targets, head(), 1).backward()  # type: ignore[no-untyped-call]
    assert hidden.grad is not None and torch.allclose(hidden.grad, plain.grad)  # type: ignore[arg-type]


def one_batch(vocab: int = 32) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 5, 9, 3, 7, 2, 4, 8], [6, 2, 2, 9, 1, 3, 0, 0]])
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def lean_trainer(tmp_path: Path, loss_path: LossPath, offload: OffloadPath) -> LeanLossTrainer:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        remove_unused_columns=False,
        label_names=["labels"],
    )
    model = with_lora(tiny_llama(), ("q_proj", "v_proj"))
    return LeanLossTrainer(model=model, args=args, loss_path=loss_path, offload_path=offload)


def test_the_trainers_chunked_loss_is_the_stock_loss_without_logits(tmp_path: Path) -> None:
    stock_trainer = lean_trainer(tmp_path / "a", LossPath.standard, OffloadPath.off)
    lean = lean_trainer(tmp_path / "b", LossPath.chunked, OffloadPath.off)
    assert stock_trainer.gathered is None and lean.gathered is None
    inputs = one_batch()
    stock, stock_out = stock_trainer.compute_loss(stock_trainer.model, inputs, True)
    ours, ours_out = lean.compute_loss(lean.model, inputs, True)
    assert ours.item() == pytest.approx(stock.item(), rel=1e-6)
    assert stock_out.logits.shape == (2, 8, 32)
    assert ours_out.logits.shape == (2, 0, 32)  # no logits at all
    assert lean.compute_loss(lean.model, inputs, num_items_in_batch=10).item() == (
        pytest.approx(stock.item() * 8 / 10, rel=1e-6)  # 8 labelled positions, shifted
    )


@pytest.mark.parametrize("path", [LossPath.chunked, LossPath.standard])
def test_a_batch_without_labels_is_a_clear_error(tmp_path: Path, path: LossPath) -> None:
    """Both paths used to fail deep in transformers ('The model did not return a loss...')."""
    trainer = lean_trainer(tmp_path, path, OffloadPath.off)
    inputs = {k: v for k, v in one_batch().items() if k != "labels"}
    with pytest.raises(ValueError) as info:
        trainer.compute_loss(trainer.model, inputs)
    assert str(info.value) == (
        "LeanLossTrainer: the batch has no 'labels' (it holds attention_mask, input_ids): the "
        "SFT loss needs the collator's labels (PadCollator; -100 where nothing is learned)"
    )


def test_the_stock_path_passes_num_items_in_batch_on(tmp_path: Path) -> None:
    stock = lean_trainer(tmp_path, LossPath.standard, OffloadPath.off)
    inputs = one_batch()
    mean = stock.compute_loss(stock.model, inputs)
    summed = stock.compute_loss(stock.model, inputs, num_items_in_batch=10)
    assert summed.item() == pytest.approx(mean.item() * 8 / 10, rel=1e-6)  # 8 labelled


def test_under_zero3_the_trainer_runs_the_chunks_on_the_gathered_head(tmp_path: Path) -> None:
    """One process, weights not partitioned (the gather is a no-op): the trainer builds the
    GatheredHead over its lm_head and its loss goes through it (one gather per forward)."""
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no"
    )
    model = with_lora(tiny_llama(), ("q_proj", "v_proj"))
    trainer = LeanLossTrainer(model=model, args=args, loss_path=LossPath.chunked, zero3=True)
    assert isinstance(trainer.gathered, GatheredHead)
    assert trainer.gathered.head is causal_lm_of(model).get_output_embeddings()
    stock = lean_trainer(tmp_path / "stock", LossPath.standard, OffloadPath.off)
    inputs = one_batch()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, inputs)
        expected = stock.compute_loss(stock.model, inputs)
    assert trainer.gathered.gathers == 1
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_trainer_step_passes_num_items_in_batch_on(tmp_path: Path) -> None:
    trainer = lean_trainer(tmp_path, LossPath.chunked, OffloadPath.off)
    inputs = one_batch()
    mean = trainer.training_step(trainer.model, dict(inputs))
    summed = trainer.training_step(trainer.model, dict(inputs), num_items_in_batch=16)
    assert summed.item() == pytest.approx(mean.item() * 8 / 16, rel=1e-5)


def test_the_trainer_steps_under_its_offloading_context(tmp_path: Path) -> None:
    """An outer saved-tensors spy sees the step's saved tensors only when offloading is off:
    with it on, the offloader's hooks take every one."""
    inputs = one_batch()
    for path, sees_some in ((OffloadPath.off, True), (OffloadPath.save_on_cpu, False)):
        trainer = lean_trainer(tmp_path / path.value, LossPath.chunked, path)
        assert trainer.offload_path is path and trainer.loss_path is LossPath.chunked
        seen: list[torch.Size] = []

        def outer(tensor: torch.Tensor, seen: list[torch.Size] = seen) -> torch.Tensor:
            seen.append(tensor.shape)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(outer, lambda t: t):
            loss = trainer.training_step(trainer.model, dict(inputs))
        assert loss.item() > 0
        assert bool(seen) is sees_some, path
