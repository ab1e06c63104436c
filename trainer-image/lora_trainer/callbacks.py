"""HF Trainer callbacks: S3 checkpoints, live metrics/progress, early stopping on eval loss,
the stop step after a SIGTERM (preemption.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from lora_contract.layout import S3Location, checkpoint_name
from lora_contract.storage import S3Store, StorageError

from .checkpoints import prune, upload_files, write_manifest
from .completion import BEST_FILE
from .metrics import ProgressReporter, log
from .preemption import StopRequest, any_rank


def _all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (just [obj] when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def peak_gpu_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


class S3CheckpointCallback(TrainerCallback):  # type: ignore[misc]
    """After the Trainer writes checkpoint-N locally: each node's first process uploads what its
    ranks wrote, then rank 0 writes MANIFEST.json (the commit point) and prunes old ones.

    An upload failure is logged and reported in progress.json; training goes on and the previous
    checkpoint stays intact (a new checkpoint never overwrites an old one).
    """

    def __init__(
        self,
        store: S3Store,
        run: S3Location,
        keep: int,
        reporter: ProgressReporter,
        best: BestEvalTracker | None = None,
    ) -> None:
        self.store = store
        self.run = run
        self.keep = keep
        self.reporter = reporter
        self.best = best  # its checkpoint is never pruned (it becomes final/)
        self.upload_seconds = 0.0
        self.uploads = 0  # complete checkpoints (manifest written) and the time they took
        self.failed_uploads = 0
        self.last_error: str | None = None

    def _protected(self) -> set[int]:
        return self.best.protected_steps() if self.best is not None else set()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        local = Path(args.output_dir) / checkpoint_name(step)
        dest = self.run.child(checkpoint_name(step))
        started = time.monotonic()
        error = None
        if state.is_local_process_zero and local.is_dir():
            try:
                upload_files(self.store, dest, local)
            except (StorageError, OSError) as exc:
                error = f"checkpoint {step} upload failed: {exc}"
        errors = [e for e in _all_gather(error) if e]
        if state.is_world_process_zero:
            if not errors:
                try:
                    write_manifest(self.store, dest, step)
                    deleted = prune(self.store, self.run, self.keep, self._protected())
                    if deleted:
                        log(f"pruned old checkpoints {deleted} (keeping {self.keep})")
                except StorageError as exc:
                    errors.append(f"checkpoint {step} manifest failed: {exc}")
            took = time.monotonic() - started
            if errors:
                self.failed_uploads += 1
                self.last_error = errors[0]
                log(f"{errors[0]}; training continues, the previous checkpoint is kept")
                self.reporter.update(last_error=errors[0])
            else:
                self.upload_seconds += took
                self.uploads += 1
                self.last_error = None
                log(f"checkpoint {step} uploaded to {dest.uri} in {took:.2f}s")
                self.reporter.update(latest_checkpoint=dest.uri, last_error=None)
            self.reporter.update(step=step)
            self.reporter.publish()


class ProgressCallback(TrainerCallback):  # type: ignore[misc]
    """Turns the Trainer's logs into metrics.jsonl records and progress.json updates (rank 0)."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self.started = time.monotonic()
        self.start_step = 0
        self.last_time = time.monotonic()
        self.last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = self.last_time = time.monotonic()
        self.start_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero:
            self.reporter.update(
                state="running", step=state.global_step, total_steps=state.max_steps
            )
            self.reporter.publish()

    def _eta(self, state: Any) -> float | None:
        done = int(state.global_step) - self.start_step
        if done <= 0:
            return None
        per_step: float = (time.monotonic() - self.started) / done
        return round(per_step * max(0, int(state.max_steps) - int(state.global_step)), 1)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "loss" not in logs and "eval_loss" not in logs:
            return  # the end-of-training summary
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
        if "loss" in logs:
            now = time.monotonic()
            tokens = state.num_input_tokens_seen - self.last_tokens
            elapsed = now - self.last_time
            tps = round(tokens / elapsed, 1) if elapsed > 0 and tokens > 0 else None
            self.last_time, self.last_tokens = now, state.num_input_tokens_seen
            record.update(
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                tokens_per_second=tps,
                gpu_memory_peak_gib=peak_gpu_memory_gib(),
            )
            if self.reporter.loss_path:
                record["loss_path"] = self.reporter.loss_path
            if self.reporter.activation_offload:
                record["activation_offload"] = self.reporter.activation_offload
            self.reporter.update(
                loss=record["loss"], learning_rate=record["learning_rate"], tokens_per_second=tps
            )
        if "eval_loss" in logs:
            record["eval_loss"] = float(logs["eval_loss"])
            self.reporter.update(eval_loss=record["eval_loss"])
        self.reporter.update(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=record["epoch"],
            eta_seconds=self._eta(state),
        )
        self.reporter.add_record(record)
        self.reporter.publish()


class EvalLossEarlyStopping(TrainerCallback, ExportableState):  # type: ignore[misc]
    """Stop after `patience` evaluations without a lower eval loss (rising eval loss means
    overfitting). Its counters are saved in checkpoints, so a resumed run keeps counting."""

    def __init__(self, patience: int, best: float | None = None, bad_evals: int = 0) -> None:
        self.patience = patience
        self.best = best
        self.bad_evals = bad_evals
        self.stopped = False

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if self.best is None or loss < self.best:
            self.best, self.bad_evals = float(loss), 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            log(
                f"early stopping at step {state.global_step}: eval loss {loss:.4f} has not beaten "
                f"{self.best:.4f} for {self.bad_evals} evaluations"
            )
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True

    def state(self) -> dict[str, Any]:
        return {
            "args": {"patience": self.patience},
            "attributes": {"best": self.best, "bad_evals": self.bad_evals},
        }


class BestEvalTracker(TrainerCallback):  # type: ignore[misc]
    """The evaluated step with the lowest eval loss. A new best is checkpointed at once (its
    adapter must exist in S3 to become final/) and pruning keeps that checkpoint. Each checkpoint
    carries the best so far in BEST_FILE, so a resumed attempt still knows an earlier one's best
    (not an HF ExportableState: HF would replace this object on resume, and the checkpoint
    callback and run_training hold it)."""

    def __init__(
        self,
        reporter: ProgressReporter | None = None,
        best_step: int | None = None,
        best_eval_loss: float | None = None,
    ) -> None:
        self.reporter = reporter
        self.best_step = best_step
        self.best_eval_loss = best_eval_loss

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None or (self.best_eval_loss is not None and loss >= self.best_eval_loss):
            return
        self.best_step, self.best_eval_loss = int(state.global_step), float(loss)
        control.should_save = True
        if self.reporter is not None and state.is_world_process_zero:
            self.reporter.update(best_step=self.best_step, best_eval_loss=self.best_eval_loss)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        local = Path(args.output_dir) / checkpoint_name(state.global_step)
        if self.best_step is not None and state.is_world_process_zero and local.is_dir():
            best = {"bestStep": self.best_step, "bestEvalLoss": self.best_eval_loss}
            (local / BEST_FILE).write_text(json.dumps(best))

    def protected_steps(self) -> set[int]:
        return set() if self.best_step is None else {self.best_step}


class ForceSaveAtEnd(TrainerCallback):  # type: ignore[misc]
    """Always checkpoint the last step, whatever the interval (the final state is resumable)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_save = True


class StepDelay(TrainerCallback):  # type: ignore[misc]
    """Fault-injection aid (env LORAJOB_STEP_DELAY_S): slow each step so tests and the demo can
    kill a pod between checkpoints. Never set in production."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


class PreemptionCallback(TrainerCallback):  # type: ignore[misc]
    """At each step end the ranks agree whether to stop; if so, this step is checkpointed
    (no evaluation first: the grace period is short) and the loop ends. `stopped_at` is the
    step; run_training then raises Preempted instead of shipping a final adapter."""

    def __init__(self, request: StopRequest) -> None:
        self.request = request
        self.stopped_at: int | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is not None or state.global_step >= state.max_steps:
            return  # the last step ends the run anyway (every rank skips, at the same step)
        device = getattr(args, "device", None)
        if not any_rank(self.request.requested(), device):
            return
        self.stopped_at = int(state.global_step)
        log(f"preempted: every rank stops at step {self.stopped_at}; saving checkpoint")
        control.should_evaluate = False
        control.should_save = True
        control.should_training_stop = True
