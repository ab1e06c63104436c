"""The chunked loss (lora_trainer.loss) against the stock one: the same loss and the same LoRA
gradients, with ignored labels, tied or untied lm_head, lm_head as a LoRA target, and under the
HF Trainer's gradient accumulation (num_items_in_batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers

from lora_trainer.data import PadCollator
from lora_trainer.gathered_head import GatheredHead, gatherable
from lora_trainer.loss import (
    IGNORE_INDEX,
    LeanLossTrainer,
    LossPath,
    causal_lm_loss,
    causal_lm_of,
    choose_loss_path,
    chunk_positions,
)
from lora_trainer.offload import OffloadPath

VOCAB = 512


def tiny_lora(tied: bool, head_target: bool, seed: int = 0) -> Any:
    """A random fp32 Llama with non-zero LoRA adapters (so every adapter gets a gradient)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=tied,
    )
    targets = ["q_proj", "v_proj", *(["lm_head"] if head_target else [])]
    lora = peft.LoraConfig(r=4, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    return peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows; the prompt part (first 9 / 14 positions) and the padding are ignored."""
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[0, :9] = IGNORE_INDEX
    labels[1, :14] = IGNORE_INDEX
    labels[1, 20:] = IGNORE_INDEX
    return ids, labels


def adapter_grads(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def chunked(model: Any, ids: torch.Tensor, labels: torch.Tensor, **options: Any) -> Any:
    causal_lm = causal_lm_of(model)
    hidden = causal_lm.get_decoder()(input_ids=ids).last_hidden_state
    return causal_lm_loss(hidden, labels, causal_lm.get_output_embeddings(), **options)


@pytest.mark.parametrize(("tied", "head_target"), [(False, False), (True, False), (False, True)])
def test_loss_and_lora_gradients_equal_the_stock_loss(tied: bool, head_target: bool) -> None:
    model = tiny_lora(tied, head_target)
    ids, labels = batch()
    stock = model(input_ids=ids, labels=labels).loss
    stock.backward()
    expected = adapter_grads(model)
    assert any("lm_head" in n for n in expected) == head_target

    head = causal_lm_of(model).get_output_embeddings()
    rows: list[int] = []  # positions per lm_head call
    hook = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        ours = chunked(model, ids, labels, chunk=5)  # 5 positions a chunk: several chunks
        # the feature ran: 21 labelled positions in chunks of 5, no full-logits projection
        assert rows == [5, 5, 5, 5, 1]
        ours.backward()
    finally:
        hook.remove()
    assert sorted(rows) == sorted([5, 5, 5, 5, 1] * 2)  # each chunk recomputed in backward
    got = adapter_grads(model)
    assert ours.item() == pytest.approx(stock.item(), rel=1e-5)
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert (got[name] - grad).abs().max().item() <= 1e-5 * max(scale, 1e-6), name


@pytest.mark.parametrize(("chunk", "head_calls"), [(7, 2 * 3), (64, 1)])
def test_only_a_batch_of_several_chunks_recomputes_them(chunk: int, head_calls: int) -> None:
    """Several chunks: each lm_head runs again in backward (its logits are not kept). One chunk:
    its buffers live from the loss straight into backward anyway, so it runs once."""
    model = tiny_lora(tied=False, head_target=False)
    ids, labels = batch()
    labelled = int(labels[..., 1:].ne(IGNORE_INDEX).sum())
    assert labelled == 21  # 3 chunks of 7, or one of 64
    calls: list[int] = []
    head = causal_lm_of(model).get_output_embeddings()
    hook = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        chunked(model, ids, labels, chunk=chunk).backward()
    finally:
        hook.remove()
    assert len(calls) == head_calls


def test_num_items_in_batch_sums_over_accumulated_micro_batches() -> None:
    """Gradient accumulation: each micro-batch's sum is divided by the whole step's count, as
    transformers does when the Trainer passes num_items_in_batch."""
    model = tiny_lora(tied=False, head_target=False)
    micro = [batch(seed) for seed in (1, 2)]
    total = sum(int(labels[..., 1:].ne(IGNORE_INDEX).sum()) for _, labels in micro)
    count = torch.tensor(total)
    stock = [model(input_ids=i, labels=lab, num_items_in_batch=count).loss for i, lab in micro]
    ours = [chunked(model, i, lab, num_items_in_batch=count, chunk=7) for i, lab in micro]
    for mine, theirs in zip(ours, stock, strict=True):
        assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert sum(ours).item() == pytest.approx(sum(stock).item(), rel=1e-5)


def test_a_batch_without_labels_is_zero_with_a_gradient_path() -> None:
    model = tiny_lora(tied=False, head_target=True)
    ids, _ = batch()
    nothing = torch.full_like(ids, IGNORE_INDEX)
    loss = chunked(model, ids, nothing, num_items_in_batch=torch.tensor(5))
    loss.backward()  # connected to the graph: accumulation over such a micro-batch still works
    assert loss.item() == 0.0
    # without num_items_in_batch the mean over zero labels is NaN, as in transformers
    assert torch.isnan(chunked(model, ids, nothing)).item()


def test_chunk_positions_keep_one_chunk_of_logits_bounded() -> None:
    assert chunk_positions(128_256) == 261  # 2**25 logit elements: 128 MiB per fp32 copy
    assert chunk_positions(512) == 65_536
    assert chunk_positions(2**30) == 1


def test_loss_path_choice(model_dir: Path) -> None:
    model = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(model_dir),
        peft.LoraConfig(r=4, target_modules=["q_proj"]),
    )
    assert choose_loss_path(model, chunked_loss=True) is LossPath.chunked  # CPU: no liger
    assert choose_loss_path(model, chunked_loss=False) is LossPath.standard
    # ZeRO-3: the chunks run on lm_head's gathered weight (a frozen plain nn.Linear), never fused
    assert choose_loss_path(model, chunked_loss=True, zero3=True) is LossPath.chunked
    assert choose_loss_path(model, chunked_loss=False, zero3=True) is LossPath.standard
    head_lora = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(model_dir),
        peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
    )
    # a LoRA-adapted lm_head adds its adapters in its own forward: the stock loss under ZeRO-3
    assert choose_loss_path(head_lora, chunked_loss=True, zero3=True) is LossPath.standard
    assert choose_loss_path(head_lora, chunked_loss=True) is LossPath.chunked
    # a model that transforms its logits after lm_head keeps the stock loss
    base: Any = model.get_base_model()
    base.config.final_logit_softcapping = 30.0
    assert choose_loss_path(model, chunked_loss=True) is LossPath.standard


def test_only_a_frozen_plain_linear_lm_head_is_gathered() -> None:
    head = torch.nn.Linear(4, 8, bias=False)
    assert not gatherable(head)  # trainable: ZeRO-3 could not take its full-size gradient
    assert gatherable(head.requires_grad_(False))
    assert not gatherable(torch.nn.Embedding(8, 4).requires_grad_(False))

    class Scaled(torch.nn.Linear):
        pass

    assert not gatherable(Scaled(4, 8).requires_grad_(False))  # its forward may differ


def test_the_gathered_path_gathers_once_per_forward_and_backward() -> None:
    """The ZeRO-3 path's wiring on one process (unpartitioned weights: the gather is a no-op):
    the stock loss and gradients, every chunk recomputed inside the backward's gather, and two
    gathers whatever the number of chunks."""
    model = tiny_lora(tied=False, head_target=False)
    ids, labels = batch()
    stock = model(input_ids=ids, labels=labels).loss
    stock.backward()
    expected = adapter_grads(model)
    causal_lm = causal_lm_of(model)
    head = causal_lm.get_output_embeddings()
    gathered = GatheredHead(head)
    calls: list[int] = []
    project = gathered.project
    gathered.project = lambda h: (calls.append(1), project(h))[1]  # type: ignore[method-assign]
    hidden = causal_lm.get_decoder()(input_ids=ids).last_hidden_state
    ours = causal_lm_loss(hidden, labels, head, chunk=7, gathered=gathered)
    assert gathered.gathers == 1
    ours.backward()
    assert gathered.gathers == 2 and gathered._backward is None
    assert len(calls) == 2 * 3  # 21 labels: 3 chunks, each recomputed in backward
    got = adapter_grads(model)
    assert ours.item() == pytest.approx(stock.item(), rel=1e-5)
    for name, grad in expected.items():
        assert (got[name] - grad).abs().max().item() <= 1e-5 * grad.abs().max().item(), name
    with torch.no_grad():  # eval: one gather, nothing checkpointed
        causal_lm_loss(hidden.detach(), labels, head, chunk=64, gathered=gathered)
    assert gathered.gathers == 3


def losses_and_weights(trainer: Any) -> tuple[list[float], Any]:
    """What a `run_two_steps` trainer logged as losses, and its trained adapter weights."""
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    named = trainer.model.named_parameters()
    return losses, {n: p.detach().clone() for n, p in named if p.requires_grad}


def run_two_steps(
    model_dir: Path,
    output: Path,
    path: LossPath,
    offload: OffloadPath = OffloadPath.off,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "lm_head"),
    checkpointing: bool = False,
) -> Any:
    """Two optimizer steps of 2 x 2 micro-batches through the real HF Trainer (the offloading
    and lean-step tests use it too); the trainer, with its state (log history, FLOPs)."""
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    lora = peft.LoraConfig(r=4, target_modules=list(targets), lora_dropout=0.0)
    model = peft.get_peft_model(base, lora)
    rows = []
    for seed in range(8):
        ids, labels = batch(seed)
        ids = ids % base.config.vocab_size
        labels = torch.where(labels >= 0, ids, labels)
        length = 20 + seed % 4  # uneven lengths: padding and per-row label counts differ
        rows.append({"input_ids": ids[0, :length].tolist(), "labels": labels[0, :length].tolist()})
    args = transformers.TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=1e-2,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        seed=0,
    )
    trainer = LeanLossTrainer(
        loss_path=path,
        offload_path=offload,
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=PadCollator(0),
    )
    trainer.train()
    return trainer


def logits_shapes(vocab: int) -> tuple[list[torch.Size], Any]:
    """Every nn.Linear output whose last dimension is the tiny model's vocabulary (lm_head's
    logits), from a global forward hook: the trainer builds its model inside."""
    shapes: list[torch.Size] = []

    def record(module: Any, _args: Any, out: Any) -> None:
        linear = isinstance(module, torch.nn.Linear) and isinstance(out, torch.Tensor)
        if linear and module.out_features == vocab:
            shapes.append(out.shape)

    return shapes, torch.nn.modules.module.register_module_forward_hook(record)


def test_the_trainer_takes_the_same_steps_with_either_loss(model_dir: Path, tmp_path: Path) -> None:
    vocab = transformers.AutoConfig.from_pretrained(model_dir).vocab_size
    stock_shapes, hook = logits_shapes(vocab)
    try:
        stock_losses, stock = losses_and_weights(
            run_two_steps(model_dir, tmp_path / "a", LossPath.standard)
        )
    finally:
        hook.remove()
    ours_shapes, hook = logits_shapes(vocab)
    try:
        ours_losses, ours = losses_and_weights(
            run_two_steps(model_dir, tmp_path / "b", LossPath.chunked)
        )
    finally:
        hook.remove()
    # the feature ran: the stock loss projected every position ([batch, seq, vocab]); the
    # chunked one had the model project none ([batch, 0, vocab]) and lm_head run on the
    # labelled positions only ([positions, vocab], 2-D)
    assert stock_shapes and all(len(s) == 3 and s[1] > 0 for s in stock_shapes)
    assert ours_shapes and all(s[-2] == 0 for s in ours_shapes if len(s) == 3)
    assert any(len(s) == 2 for s in ours_shapes)
    assert ours_losses == pytest.approx(stock_losses, rel=1e-5)
    for name, weight in stock.items():
        assert torch.allclose(ours[name], weight, rtol=1e-4, atol=1e-6), name


@pytest.mark.gpu
def test_fused_liger_loss_equals_the_stock_loss_on_cuda() -> None:
    """CUDA with liger-kernel (the trainer image): the fused path is chosen for a frozen plain
    lm_head and gives the stock loss and gradients (bf16 logits: a looser tolerance)."""
    model = tiny_lora(tied=False, head_target=False).to("cuda", torch.bfloat16)
    assert choose_loss_path(model, chunked_loss=True) is LossPath.fused
    ids, labels = (t.cuda() for t in batch())
    stock = model(input_ids=ids, labels=labels).loss
    stock.backward()
    expected = adapter_grads(model)
    ours = chunked(model, ids, labels, path=LossPath.fused)
    ours.backward()
    got = adapter_grads(model)
    assert ours.item() == pytest.approx(stock.item(), rel=1e-2)
    for name, grad in expected.items():
        assert torch.allclose(got[name].float(), grad.float(), rtol=5e-2, atol=1e-3), name
