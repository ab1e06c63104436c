"""Which checkpoint each rank resumes from, decided without training: on every node the first
process (local rank 0) picks the newest complete, verified checkpoint in S3 and downloads it;
the node's other processes read the note it leaves and never touch S3; a restart after the
last step's checkpoint trains no further (`completion.completed_state`); and every rank leaves
the process group before it exits. `train.prepare_resume` runs as the trainer calls it; `args`
stands for TrainingArguments, whose main_process_first orders the node's processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch.distributed as dist
from transformers import TrainerState

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_trainer.checkpoints import latest_checkpoint, upload_checkpoint
from lora_trainer.completion import completed_state, copy_adapter, release_process_group
from lora_trainer.config import ProcessPlace
from lora_trainer.errors import TransientError
from lora_trainer.train import RESUME_NOTE, prepare_resume

from .conftest import BUCKET

DEAD = S3Store("http://127.0.0.1:9", "k", "s", retries=1)  # any S3 call through it fails


class Args:
    """TrainingArguments.main_process_first(local=True): the node's first process runs the
    block first; here the ranks run one after another in that order."""

    def __init__(self) -> None:
        self.blocks: list[tuple[bool, str]] = []

    @contextmanager
    def main_process_first(self, local: bool = True, desc: str = "") -> Iterator[None]:
        self.blocks.append((local, desc))
        yield


def fresh_run() -> S3Location:
    return S3Location(BUCKET, f"resume-units/{uuid.uuid4().hex[:8]}/r1")


def checkpoint(store: S3Store, run: S3Location, tmp: Path, step: int, complete: bool) -> None:
    local = tmp / f"local-{step}"
    local.mkdir(parents=True, exist_ok=True)
    (local / "adapter_model.safetensors").write_bytes(b"w" * step)
    if complete:
        upload_checkpoint(store, run, local, step)
    else:  # a pod died mid-upload: files, no manifest
        store.upload_dir(run.child(f"checkpoint-{step}"), local)


def place(rank: int, local_rank: int, world: int = 4) -> ProcessPlace:
    return ProcessPlace(rank=rank, local_rank=local_rank, world_size=world)


def test_the_nodes_first_process_downloads_the_newest_complete_checkpoint(
    store: S3Store, tmp_path: Path
) -> None:
    run = fresh_run()
    checkpoint(store, run, tmp_path, 2, complete=True)
    checkpoint(store, run, tmp_path, 4, complete=True)
    checkpoint(store, run, tmp_path, 6, complete=False)  # newer, incomplete: ignored
    scratch = tmp_path / "node0"
    args = Args()
    got = prepare_resume(store, run, scratch, args, place(0, 0))
    assert got == scratch / "resume" / "checkpoint-4"
    assert (got / "adapter_model.safetensors").read_bytes() == b"w" * 4
    assert not (got / "MANIFEST.json").exists()
    assert json.loads((scratch / RESUME_NOTE).read_text()) == {"path": str(got)}
    assert args.blocks == [(True, "checkpoint download")]


def test_the_nodes_other_processes_read_the_note_and_never_s3(
    store: S3Store, tmp_path: Path
) -> None:
    run = fresh_run()
    checkpoint(store, run, tmp_path, 3, complete=True)
    scratch = tmp_path / "node0"
    first = prepare_resume(store, run, scratch, Args(), place(0, 0))
    for rank in (1, 2, 3):  # the same node's local ranks 1-3: S3 unreachable for them
        assert prepare_resume(DEAD, run, scratch, Args(), place(rank, rank)) == first


def test_a_second_nodes_first_process_downloads_for_its_own_node(
    store: S3Store, tmp_path: Path
) -> None:
    run = fresh_run()
    checkpoint(store, run, tmp_path, 5, complete=True)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    prepare_resume(store, run, node0, Args(), place(0, 0))
    got = prepare_resume(store, run, node1, Args(), place(2, 0))  # rank 2 = node 1's local 0
    assert got == node1 / "resume" / "checkpoint-5"
    assert (got / "adapter_model.safetensors").exists()
    # and rank 2 does not trust node 0's note: with S3 down it fails instead of reading one
    with pytest.raises(TransientError, match="cannot read checkpoints to resume from"):
        prepare_resume(DEAD, run, node0, Args(), place(2, 0))


def test_no_complete_checkpoint_means_a_fresh_start_on_every_rank(
    store: S3Store, tmp_path: Path
) -> None:
    run = fresh_run()
    checkpoint(store, run, tmp_path, 2, complete=False)
    scratch = tmp_path / "node0"
    scratch.mkdir()  # as train.main makes it before
    assert prepare_resume(store, run, scratch, Args(), place(0, 0)) is None
    assert json.loads((scratch / RESUME_NOTE).read_text()) == {"path": None}
    assert prepare_resume(DEAD, run, scratch, Args(), place(1, 1)) is None
    assert not (scratch / "resume").exists()


def test_without_a_note_the_other_processes_start_fresh(tmp_path: Path) -> None:
    assert prepare_resume(DEAD, fresh_run(), tmp_path, Args(), place(1, 1)) is None


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    store: S3Store, tmp_path: Path
) -> None:
    run = fresh_run()
    checkpoint(store, run, tmp_path, 2, complete=True)
    checkpoint(store, run, tmp_path, 4, complete=True)
    store.delete(run.child("checkpoint-4", "adapter_model.safetensors"))  # listed, gone
    assert latest_checkpoint(store, run) == 2
    got = prepare_resume(store, run, tmp_path / "n", Args(), place(0, 0))
    assert got is not None and got.name == "checkpoint-2"


def write_state(folder: Path, step: int, max_steps: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    TrainerState(global_step=step, max_steps=max_steps).save_to_json(
        str(folder / "trainer_state.json")
    )
    return folder


@pytest.mark.parametrize(
    ("step", "max_steps", "done"),
    [(8, 8, True), (9, 8, True), (7, 8, False), (0, 0, False), (5, 0, False)],
)
def test_a_checkpoint_is_complete_when_it_holds_the_last_step(
    tmp_path: Path, step: int, max_steps: int, done: bool
) -> None:
    state = completed_state(write_state(tmp_path / "ckpt", step, max_steps))
    assert (state is not None) is done
    if state is not None:
        assert (state.global_step, state.max_steps) == (step, max_steps)


def test_no_checkpoint_or_no_state_is_not_complete(tmp_path: Path) -> None:
    assert completed_state(None) is None
    assert completed_state(tmp_path) is None  # a folder without trainer_state.json
    (tmp_path / "trainer_state.json").mkdir()  # not a file
    assert completed_state(tmp_path) is None


def test_the_checkpoints_adapter_files_become_the_final_adapter(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-8"
    ckpt.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "rng.pth"):
        (ckpt / name).write_text(name)
    final = tmp_path / "out" / "final"
    assert copy_adapter(ckpt, final) == ["adapter_model.safetensors", "adapter_config.json"]
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (final / "adapter_config.json").read_text() == "adapter_config.json"
    (ckpt / "README.md").write_text("card")
    assert copy_adapter(ckpt, final) == [
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
    ]


def test_every_rank_leaves_the_process_group(tmp_path: Path) -> None:
    release_process_group()  # no group: nothing to do, no error
    store = dist.FileStore(str(tmp_path / "rendezvous"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        release_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
