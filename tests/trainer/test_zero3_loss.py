"""The chunked loss under DeepSpeed ZeRO-3 on two processes (CPU, gloo): the same losses and the
same LoRA updates as the stock loss, through the real HF Trainer, with lm_head's weight gathered
exactly twice per micro-batch on each rank although the ranks run different numbers of chunks.

This file is also the worker: torchrun runs it as a script (`worker` below), two ranks, each
training the stock and then the chunked path for two SGD steps from the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

STEPS, MICRO, ACCUMULATION, RANKS = 2, 2, 2, 2
CHUNK = 5  # positions per loss chunk in the worker: several chunks, a different count per rank
LR = 0.5  # SGD: an update is the gradient itself, scaled (Adam's first step would hide its size)


def rows(vocab: int, count: int) -> list[dict[str, list[int]]]:
    """Uneven lengths and prompt lengths: each rank and micro-batch has its own label count."""
    import torch

    out = []
    generator = torch.Generator().manual_seed(7)
    for i in range(count):
        length = 10 + (i * 7) % 15
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        prompt = 2 + (i * 3) % 6
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def spec() -> Any:
    from lora_contract.types import LoRAJobSpec

    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": "pvc://models/tiny"},
            "dataset": {"source": "/d.jsonl", "format": "chat"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
            "training": {
                "microBatchSize": MICRO,
                "gradientAccumulation": ACCUMULATION,
                "maxGradNorm": 1e6,  # no clipping: the update is the gradient
            },
            "distributed": {"strategy": "deepspeed-zero3"},
            "output": {"bucket": "out"},
            "resources": {"gpuType": "cpu"},
        }
    )


def train_two_steps(model_dir: str, output: Path, chunked: bool) -> dict[str, Any]:
    """Two SGD steps through LeanLossTrainer under ZeRO-3, as `run_training` sets them up."""
    import deepspeed
    import torch
    from transformers import TrainingArguments

    from lora_contract.types import Strategy
    from lora_operator.deepspeed_config import deepspeed_config
    from lora_trainer.data import PadCollator
    from lora_trainer.deepspeed_setup import join_process_group
    from lora_trainer.loss import LeanLossTrainer, choose_loss_path
    from lora_trainer.model import apply_lora, load_base_model

    job = spec()
    job.training.chunked_loss = chunked
    ds = deepspeed_config(job, Strategy.deepspeed_zero3)
    assert ds is not None
    ds.update(bf16={"enabled": False}, fp16={"enabled": False})  # as deepspeed_for_device on CPU
    args = TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="constant",
        optim="sgd",
        max_grad_norm=job.training.max_grad_norm,
        use_cpu=True,
        ddp_backend="gloo",
        deepspeed=ds,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
    )
    join_process_group()
    torch.manual_seed(0)
    model = apply_lora(load_base_model(model_dir, job, int(os.environ["LOCAL_RANK"]), True), job)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero B from the start: every adapter gets a gradient
            torch.nn.init.normal_(param, std=0.1)
    path = choose_loss_path(model, chunked_loss=chunked, zero3=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    vocab = model.get_base_model().config.vocab_size
    trainer = LeanLossTrainer(
        loss_path=path,
        zero3=True,
        model=model,
        args=args,
        train_dataset=rows(vocab, STEPS * MICRO * ACCUMULATION * RANKS),
        data_collator=PadCollator(0),
    )
    projected: list[int] = []
    if trainer.gathered is not None:
        project = trainer.gathered.project

        def counted(hidden: torch.Tensor) -> torch.Tensor:
            projected.append(int(hidden.shape[0]))
            return project(hidden)

        trainer.gathered.project = counted  # type: ignore[method-assign]
    trainer.train()
    params = [p for _, p in trainer.model.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        after = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in before}
    torch.save({n: after[n] - before[n] for n in before}, output / "updates.pt")
    return {
        "path": path.value,
        "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "gathers": trainer.gathered.gathers if trainer.gathered else 0,
        "projected": projected,
    }


def worker(model_dir: str, out: str) -> None:
    import lora_trainer.loss

    rank = int(os.environ["RANK"])
    lora_trainer.loss.CHUNK_LOGIT_ELEMENTS = CHUNK * 512  # CHUNK positions at the tiny vocab
    results = {}
    for chunked in (False, True):
        folder = Path(out) / f"{'chunked' if chunked else 'stock'}-rank{rank}"
        folder.mkdir(parents=True)
        results[folder.name.split("-")[0]] = train_two_steps(model_dir, folder, chunked)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_zero3_two_processes_chunked_loss_equals_the_stock_loss(
    model_dir: Path, tmp_path: Path
) -> None:
    import torch

    from .conftest import finish_all, rendezvous_port

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc-per-node={RANKS}",
            "--master-addr=127.0.0.1",
            f"--master-port={rendezvous_port()}",
            __file__,
            str(model_dir),
            str(tmp_path),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    [(code, out)] = finish_all([proc], timeout=300)
    assert code == 0, out[-6000:]
    assert "chunked loss under ZeRO-3: lm_head's" in out
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(RANKS)]
    micro_batches = STEPS * ACCUMULATION
    for result in ranks:
        stock, chunked = result["stock"], result["chunked"]
        assert (stock["path"], chunked["path"]) == ("standard", "chunked")
        # the chunked path ran on the gathered weight: one gather per forward and per backward
        assert chunked["gathers"] == 2 * micro_batches and stock["gathers"] == 0
        assert len(chunked["losses"]) == STEPS
        assert chunked["losses"] == pytest.approx(stock["losses"], rel=1e-5)
    # several chunks per micro-batch, each projected in forward and again in backward's
    # recompute, and a different number on each rank (the gathers still pair up)
    counts = [len(result["chunked"]["projected"]) for result in ranks]
    assert all(count > 2 * micro_batches for count in counts) and counts[0] != counts[1], counts
    for r in range(RANKS):
        stock = torch.load(tmp_path / f"stock-rank{r}" / "updates.pt")
        chunked = torch.load(tmp_path / f"chunked-rank{r}" / "updates.pt")
        assert stock.keys() == chunked.keys() and len(stock) >= 4
        for name, update in stock.items():
            scale = update.abs().max().item()
            assert scale > 1e-4, name  # every adapter moved
            assert (chunked[name] - update).abs().max().item() <= 1e-4 * scale, name


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
