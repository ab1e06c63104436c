"""One training run end to end: sources -> data -> model -> HF Trainer (DDP or DeepSpeed) with
S3 checkpoints, resume from the latest complete checkpoint, metrics, and the final adapter.

The HF Trainer (under accelerate) is used rather than TRL's SFTTrainer: our own collator gives
exact completion-only labels for all three formats, and Trainer's `resume_from_checkpoint`
restores optimizer, scheduler, RNG and the data position (same order, same step).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_contract.layout import FINAL_DIR, S3Location
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import ComputeDtype, TrainerConfig

from . import settings
from .checkpoints import download_checkpoint, latest_checkpoint
from .completion import (
    best_from_checkpoint,
    completed_state,
    copy_adapter,
    fetch_adapter,
    release_process_group,
)
from .config import ProcessPlace, work_dir
from .data import ListDataset, load_examples, pack, split_eval
from .deepspeed_setup import (
    check_batch,
    check_parsed,
    config_errors,
    deepspeed_for_device,
    join_process_group,
    zero_stage,
)
from .errors import InvalidConfigError, TransientError
from .metrics import ProgressReporter, log
from .model import apply_lora, cuda_available, load_base_model, load_tokenizer, trainable_summary
from .ownership import claim_output, owner_from_env
from .settings import TrainerSettings
from .sources import (
    fetch_s3_object,
    fetch_s3_prefix,
    hf_cache_path,
    local_path,
    storage_error,
)

RESUME_NOTE = "resume.json"
DEFAULT_DDP_TIMEOUT_S = settings.DEFAULT_DDP_TIMEOUT_S


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    resumed_from: int | None
    adapter_uri: str | None
    final_loss: float | None
    final_eval_loss: float | None
    stopped_early: bool
    checkpoint_upload_seconds: float
    checkpoint_uploads: int


def open_store(config: TrainerConfig) -> S3Store:
    try:
        return S3Store.from_env(config.spec.output.endpoint)
    except StorageError as exc:
        raise InvalidConfigError(f"output: {exc}") from None


def model_path(config: TrainerConfig, store: S3Store, scratch: Path) -> str:
    source = config.spec.base_model.source
    if source.startswith("s3://"):
        return str(fetch_s3_prefix(store, source, scratch / "base-model", "baseModel.source"))
    if source.startswith("hf://"):
        return hf_cache_path(source)
    path = local_path(source)
    if path is None or not path.exists():
        raise InvalidConfigError(f"baseModel.source {source}: {path} does not exist on this node")
    return str(path)


def base_adapter(config: TrainerConfig, store: S3Store) -> Path | None:
    """spec.baseAdapter as the operator resolved it (TrainerConfig.baseAdapterURI), downloaded
    once per node. A resumed run starts from it too, then loads its own checkpoint over it."""
    uri = config.base_adapter_uri
    if uri is None:
        return None
    if not uri.startswith("s3://"):
        raise InvalidConfigError(f"spec.baseAdapter: {uri} is not an s3:// adapter folder")
    return fetch_s3_prefix(store, uri, work_dir(config) / "base-adapter", "spec.baseAdapter")


def data_path(uri: str, field: str, store: S3Store, scratch: Path) -> Path:
    if uri.startswith("s3://"):
        return fetch_s3_object(store, uri, scratch / "data", field)
    path = local_path(uri)
    if path is None:
        raise InvalidConfigError(f"{field} {uri}: unsupported scheme")
    if not path.exists():
        raise InvalidConfigError(f"{field} {uri}: file not found")
    return path


def build_datasets(
    config: TrainerConfig, tokenizer: Any, store: S3Store, scratch: Path
) -> tuple[ListDataset, ListDataset | None]:
    spec = config.spec.dataset
    seed = config.spec.training.seed
    train_path = data_path(spec.source, "dataset.source", store, scratch)
    examples = load_examples(train_path, f"dataset.source {spec.source}", spec, tokenizer)
    if spec.eval_source:
        eval_path = data_path(spec.eval_source, "dataset.evalSource", store, scratch)
        train = examples
        held = load_examples(eval_path, f"dataset.evalSource {spec.eval_source}", spec, tokenizer)
    else:
        train, held = split_eval(examples, spec.eval_split, seed)
    if spec.packing:
        train = pack(train, spec.max_seq_length)
        held = pack(held, spec.max_seq_length)
    if config.spec.training.early_stopping_patience is not None and not held:
        raise InvalidConfigError(
            "training.earlyStoppingPatience needs eval data, but the eval split is empty "
            f"({len(examples)} rows x evalSplit {spec.eval_split})"
        )
    return ListDataset(train), (ListDataset(held) if held else None)


def single_process_rendezvous() -> None:
    """DeepSpeed always initialises torch.distributed; alone, it would try MPI discovery. Give a
    single process a world of one on a free loopback port instead."""
    import socket

    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def training_arguments(
    config: TrainerConfig, output_dir: Path, has_eval: bool, on_cuda: bool, world_size: int
) -> Any:
    from transformers import TrainingArguments

    t = config.spec.training
    dtype = config.spec.quantization.compute_dtype
    ds = deepspeed_for_device(config, on_cuda)
    # DeepSpeed checks its config against these arguments here: a mismatch is a bad config
    with config_errors() if ds else contextlib.nullcontext():
        return TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=t.micro_batch_size,
            per_device_eval_batch_size=t.micro_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation,
            num_train_epochs=t.epochs,
            max_steps=t.max_steps or -1,
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.scheduler.value,
            warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            optim=t.optimizer.value,
            activation_checkpointing=t.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            seed=t.seed,
            data_seed=t.seed,
            logging_steps=t.log_interval,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=t.eval_interval if has_eval else None,
            save_strategy="steps",
            save_steps=t.checkpoint_interval,
            save_total_limit=2,
            bf16=on_cuda and dtype == ComputeDtype.bf16,
            fp16=on_cuda and dtype == ComputeDtype.fp16,
            use_cpu=not on_cuda,
            ddp_backend=("nccl" if on_cuda else "gloo") if world_size > 1 else None,
            ddp_find_unused_parameters=False,
            ddp_timeout=collective_timeout(),
            deepspeed=ds,
            include_num_input_tokens_seen="non_padding",
            remove_unused_columns=False,
            label_names=["labels"],
            report_to="none",
            disable_tqdm=True,
            restore_callback_states_from_checkpoint=True,
            dataloader_num_workers=0,
        )


def prepare_resume(
    store: S3Store, run: S3Location, scratch: Path, args: Any, place: ProcessPlace
) -> Path | None:
    """The node's first process finds and downloads the latest complete checkpoint; the node's
    other processes wait (main_process_first) and read the note it leaves."""
    note = scratch / RESUME_NOTE
    with args.main_process_first(local=True, desc="checkpoint download"):
        if place.is_local_main:
            try:
                step = latest_checkpoint(store, run)
                local = download_checkpoint(store, run, step, scratch / "resume") if step else None
            except StorageError as exc:
                raise storage_error(exc, "cannot read checkpoints to resume from") from None
            note.write_text(json.dumps({"path": str(local) if local else None}))
        found = json.loads(note.read_text())["path"] if note.exists() else None
    return Path(found) if found else None


def _reset_scratch(scratch: Path, args: Any, place: ProcessPlace) -> None:
    """A restarted container may find an older attempt's files: start from S3, not from them."""
    with args.main_process_first(local=True, desc="scratch reset"):
        if place.is_local_main:
            for name in ("output", "resume", "final", RESUME_NOTE):
                target = scratch / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()


def check_bucket(store: S3Store, config: TrainerConfig) -> None:
    try:
        store.ensure_bucket(config.spec.output.bucket)
    except StorageError as exc:
        raise storage_error(exc, "output bucket is not usable") from None


def upload_final(
    store: S3Store, run: S3Location, final_dir: Path, reporter: ProgressReporter
) -> str:
    """final/ (adapter + manifest) and loss.png; a failure here fails the attempt (retried)."""
    dest = run.child(FINAL_DIR)
    try:
        store.delete_prefix(dest)
        upload_checkpoint_like(store, dest, final_dir)
    except StorageError as exc:
        raise TransientError(f"final adapter upload to {dest.uri} failed: {exc}") from None
    reporter.publish_plot(f"{run.key}")
    return dest.uri


def upload_checkpoint_like(store: S3Store, dest: S3Location, local_dir: Path) -> None:
    from .checkpoints import upload_files, write_manifest

    upload_files(store, dest, local_dir)
    write_manifest(store, dest, None)


def publish_resumed(
    reporter: ProgressReporter, resume_dir: Path, step: int, run: S3Location
) -> None:
    """Before the model loads, progress.json says where this attempt resumes (step, total, the
    checkpoint): `kubectl get` never shows "0/?" between attempts."""
    total = 0
    state_file = resume_dir / "trainer_state.json"
    if state_file.is_file():
        total = int(json.loads(state_file.read_text()).get("max_steps") or 0)
    reporter.update(
        step=step,
        resumed_from=step,
        latest_checkpoint=run.child(f"checkpoint-{step}").uri,
        **({"total_steps": total} if total else {}),
    )
    reporter.publish()


def step_delay() -> float:
    """Env LORAJOB_STEP_DELAY_S (fault-injection aid for tests and the demo; 0 = off)."""
    return TrainerSettings.from_env().step_delay_s


def collective_timeout() -> int:
    """Env LORAJOB_DDP_TIMEOUT_S (default 900): how long a collective waits for a dead peer under
    NCCL before failing, instead of transformers' 1800 s. Loading skew between ranks (a large
    base model from slow storage) must fit in it."""
    return TrainerSettings.from_env().ddp_timeout_s


def stop_preempted(step: int, checkpoint_cb: Any, reporter: ProgressReporter) -> None:
    """After the preemption checkpoint: rank 0 notes it in progress.json, every rank leaves
    the process group, and Preempted carries exit code EXIT_PREEMPTED to main."""
    from .preemption import Preempted

    stopped = Preempted(step, checkpoint_saved=checkpoint_cb.last_error is None)
    reporter.update(state="stopped", step=step, last_error=stopped.message)
    reporter.publish()
    release_process_group()
    raise stopped


def run_training(
    config: TrainerConfig, place: ProcessPlace, extra_callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Train; raise a TrainerError subclass on any expected failure. `extra_callbacks` are added
    to the HF Trainer's (the benchmark's clock)."""
    from .callbacks import (
        BestEvalTracker,
        EvalLossEarlyStopping,
        ForceSaveAtEnd,
        PreemptionCallback,
        ProgressCallback,
        S3CheckpointCallback,
        StepDelay,
    )
    from .loss import choose_loss_path
    from .objectives import objective_for
    from .offload import choose_offload_path
    from .preemption import StopRequest

    stop_request = StopRequest.from_env()
    stop_request.install()  # from here a SIGTERM checkpoints at the next step end (preemption.py)
    started = time.time()  # lineage: start time and GPU-hours (model_card.py)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = config.spec
    store = open_store(config)
    run = S3Location.parse(config.output_uri)
    scratch = work_dir(config)
    scratch.mkdir(parents=True, exist_ok=True)
    reporter = ProgressReporter(store, run, enabled=place.is_main)
    if place.is_main:
        check_bucket(store, config)
        claim_output(store, run, owner_from_env(config))
        reporter.update(state="starting", last_error=None)
        if reporter.publish():
            raise TransientError(f"S3 at {store.endpoint} is not writable: see the log above")

    on_cuda = cuda_available()
    base = model_path(config, store, scratch)
    tokenizer = load_tokenizer(base)
    objective = objective_for(config)  # sft or dpo: data, arguments, Trainer (objectives.py)
    train_ds, eval_ds = objective.datasets(config, tokenizer, store, scratch)
    training = spec.training
    if config.deepspeed:
        check_batch(
            config.deepspeed,
            training.micro_batch_size,
            training.gradient_accumulation,
            place.world_size,
        )
        single_process_rendezvous()
    args = training_arguments(
        config, scratch / "output", eval_ds is not None, on_cuda, place.world_size
    )
    args = objective.arguments(config, args)
    if config.deepspeed:
        join_process_group()  # before zero.Init parses the config (lora_trainer.deepspeed_setup)
        check_parsed(args)
    _reset_scratch(scratch, args, place)
    resume_dir = prepare_resume(store, run, scratch, args, place)
    resumed_from = int(resume_dir.name.split("-")[-1]) if resume_dir else None
    if resumed_from is not None:
        log(f"resuming from checkpoint-{resumed_from} ({run.uri})")
        reporter.load_previous_records(resumed_from)
        publish_resumed(reporter, resume_dir, resumed_from, run)  # type: ignore[arg-type]

    from transformers import set_seed

    set_seed(spec.training.seed)  # LoRA's A matrices are random: same seed, same run
    zero3 = zero_stage(config.deepspeed) == 3
    model = apply_lora(
        load_base_model(base, spec, place.local_rank, zero3), spec, base_adapter(config, store)
    )
    trainable, total = trainable_summary(model)
    loss_path = choose_loss_path(model, spec.training.chunked_loss, zero3)
    loss_name = objective.loss_path(loss_path.value)  # DPO's is TRL's (objectives.py)
    reporter.loss_path = loss_name
    offload_path = choose_offload_path(spec.training.activation_offloading, on_cuda)
    reporter.activation_offload = offload_path.value
    log(
        f"model {spec.base_model.name}: {trainable:,} trainable of {total:,} parameters; "
        f"{len(train_ds)} train / {len(eval_ds) if eval_ds else 0} eval sequences; "
        f"world size {place.world_size}; {'cuda' if on_cuda else 'cpu'}; loss {loss_name}; "
        f"activation offload {offload_path.value}"
        + (
            f"; deepspeed ZeRO-{config.deepspeed['zero_optimization']['stage']}"
            if config.deepspeed
            else ""
        )
    )
    best = None
    if eval_ds is not None:  # resumed: the best so far is in the checkpoint
        best = BestEvalTracker(reporter, *best_from_checkpoint(resume_dir))
        if best.best_step is not None:
            reporter.update(best_step=best.best_step, best_eval_loss=best.best_eval_loss)
    checkpoint_cb = S3CheckpointCallback(store, run, spec.training.keep_checkpoints, reporter, best)
    preemption = PreemptionCallback(stop_request)
    callbacks: list[Any] = [
        ProgressCallback(reporter),
        preemption,  # before the checkpoint callback: it asks for this step's save
        checkpoint_cb,
        ForceSaveAtEnd(),
        *objective.callbacks(reporter),  # after ProgressCallback: they amend its record
        *extra_callbacks,
    ]
    if best is not None:
        callbacks.insert(1, best)  # before the checkpoint callback: pruning spares its step
    delay = step_delay()
    if delay:
        callbacks.append(StepDelay(delay))
    if spec.training.early_stopping_patience is not None:
        callbacks.append(EvalLossEarlyStopping(spec.training.early_stopping_patience))
    trainer = objective.trainer(
        tokenizer=tokenizer,
        loss_path=loss_path,
        offload_path=offload_path,
        zero3=zero3,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        callbacks=callbacks,
    )
    if resumed_from is not None and place.is_main:
        reporter.update(
            state="running",
            step=resumed_from,
            latest_checkpoint=run.child(f"checkpoint-{resumed_from}").uri,
        )
        reporter.publish()
    final_dir = scratch / "final"
    finished = completed_state(resume_dir)
    if finished is None:
        trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
        if preemption.stopped_at is not None:
            stop_preempted(preemption.stopped_at, checkpoint_cb, reporter)
        trainer.save_model(str(final_dir))  # every rank: ZeRO-3 gathers the sharded weights
        state = trainer.state
    else:  # restarted after the last checkpoint: its adapter is the final one (completion.py)
        assert resume_dir is not None
        log(f"checkpoint-{resumed_from} holds the last step: no further training")
        copy_adapter(resume_dir, final_dir)
        state = finished
    best_step = best.best_step if best is not None else None
    if (
        place.is_main
        and best is not None
        and best_step is not None
        and best_step != state.global_step
    ):
        try:
            fetch_adapter(store, run, best_step, final_dir)
        except StorageError as exc:
            raise TransientError(f"best adapter (step {best_step}) fetch failed: {exc}") from None
        log(f"final adapter is step {best_step}'s (lowest eval loss {best.best_eval_loss})")
    stopper = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, EvalLossEarlyStopping)),
        None,
    )
    stopped_early = bool(stopper and stopper.stopped)
    losses = [r for r in reporter.records if r.get("loss") is not None]
    evals = [r for r in reporter.records if r.get("eval_loss") is not None]
    result = TrainResult(
        steps=state.global_step,
        total_steps=state.max_steps,
        resumed_from=resumed_from,
        adapter_uri=None,
        final_loss=losses[-1]["loss"] if losses else None,
        final_eval_loss=evals[-1]["eval_loss"] if evals else None,
        stopped_early=stopped_early,
        checkpoint_upload_seconds=checkpoint_cb.upload_seconds,
        checkpoint_uploads=checkpoint_cb.uploads,
    )
    if place.is_main:
        from .model_card import record_in_manifest, write_lineage

        sources = [spec.dataset.source, spec.dataset.eval_source]
        read = [data_path(u, "dataset", store, scratch) for u in sources if u]
        gpus = place.world_size if on_cuda else 0
        facts = write_lineage(config, final_dir, read, reporter.records, started, gpus)
        result.adapter_uri = upload_final(store, run, final_dir, reporter)
        record_in_manifest(store, run.child(FINAL_DIR), facts)
        reporter.update(
            state="succeeded",
            step=state.global_step,
            total_steps=state.max_steps,
            adapter_uri=result.adapter_uri,
            stopped_early=stopped_early,
            best_step=best_step,
            best_eval_loss=best.best_eval_loss if best is not None else None,
            eta_seconds=0.0,
            last_error=checkpoint_cb.last_error,
        )
        if reporter.publish():
            raise TransientError("could not record the finished run in progress.json")
        log(
            f"done: {state.global_step}/{state.max_steps} steps"
            + (" (stopped early)" if stopped_early else "")
            + f"; adapter at {result.adapter_uri}"
        )
    release_process_group()
    return result
