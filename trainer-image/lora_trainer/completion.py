"""The end of a run: a restart after the last checkpoint trains no further, and every rank
leaves the process group before it exits.

A pod (or torchrun's worker group) restarted after the final step's checkpoint was written but
before the adapter reached `final/` resumes from that checkpoint. HF Trainer then runs one more
optimizer step past `max_steps` (its loop checks the stop flag only after a step): a different
adapter and "13/12 steps". `completed_state` tells the run it is done, and the checkpoint's own
adapter files become the final adapter.

A rank that exits with its gloo/NCCL process group still alive can abort in the group's C++
destructor ("terminate called without an active exception", exit -6) while rank 0 still uploads;
torchrun then restarts the whole worker group. `release_process_group` waits for every rank and
destroys the group first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lora_contract.layout import S3Location, checkpoint_name
from lora_contract.storage import S3Store, StorageError

TRAINER_STATE = "trainer_state.json"
BEST_FILE = "best_eval.json"  # in each checkpoint: the best evaluated step so far
# What HF Trainer's save_model writes for a PEFT model (the rest of a checkpoint is optimizer,
# scheduler, RNG and DeepSpeed state, which a finished adapter does not need).
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


def completed_state(checkpoint: Path | None) -> Any | None:
    """The checkpoint's TrainerState when it already holds the run's last step, else None."""
    if checkpoint is None or not (checkpoint / TRAINER_STATE).is_file():
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))
    if state.max_steps and state.global_step >= state.max_steps:
        return state
    return None


def copy_adapter(checkpoint: Path, final_dir: Path) -> list[str]:
    """The checkpoint's adapter files into `final_dir`; the names copied."""
    final_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ADAPTER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, final_dir / name)
            copied.append(name)
    return copied


def best_from_checkpoint(checkpoint: Path | None) -> tuple[int | None, float | None]:
    """The best evaluated step and its eval loss as of `checkpoint` (its BEST_FILE, written by
    callbacks.BestEvalTracker); (None, None) when it has none."""
    if checkpoint is None or not (checkpoint / BEST_FILE).is_file():
        return None, None
    best = json.loads((checkpoint / BEST_FILE).read_text())
    step, loss = best.get("bestStep"), best.get("bestEvalLoss")
    return (int(step) if step is not None else None, float(loss) if loss is not None else None)


def fetch_adapter(store: S3Store, run: S3Location, step: int, final_dir: Path) -> list[str]:
    """checkpoint-<step>'s adapter files from S3 replace `final_dir`'s: the best evaluated step's
    adapter ships, not the last step's. The names copied."""
    source = run.child(checkpoint_name(step))
    present = store.list(source)
    if ADAPTER_FILES[0] not in present:
        raise StorageError(f"{source.uri} has no {ADAPTER_FILES[0]}", transient=True)
    final_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ADAPTER_FILES:
        (final_dir / name).unlink(missing_ok=True)
        if name in present:
            store.download_file(source.child(name), final_dir / name)
            copied.append(name)
    return copied


def release_process_group() -> None:
    """Every rank waits for the others here, then the process group is destroyed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
