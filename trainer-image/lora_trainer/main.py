"""`lora-trainer` / `python -m lora_trainer.main`: one training process.

Exit codes follow the contract in `lora_contract.pod`: 0 ok, 3 bad config or data (the
Job fails at once), 75 transient (the pod is retried and resumes from the latest checkpoint).
Before a non-zero exit, rank 0 records the error in progress.json when S3 is reachable, and the
message goes to stderr and the pod's termination log.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from lora_contract import pod
from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_TRANSIENT
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import Progress, TrainerConfig

from .config import ProcessPlace, config_path, load_trainer_config
from .errors import TrainerError, local_disk_fault
from .metrics import ProgressReporter
from .ownership import may_record_failure
from .preemption import Preempted, process_exit_code
from .settings import ENV_EXIT_CODE_DIR, ENV_TERMINATION_LOG

TERMINATION_LOG = pod.TERMINATION_LOG


def write_termination_message(message: str) -> None:
    """Kubernetes mounts this file and shows its content in the pod status (the operator reads
    it). Written only where it exists; env LORAJOB_TERMINATION_LOG overrides the path."""
    path = Path(os.environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)
    if path.exists():
        with contextlib.suppress(OSError):
            path.write_text(message[:4000])


@dataclass(frozen=True)
class FailureTarget:
    """Where a failure is recorded: the run's S3 folder and the endpoint it lives at."""

    output_uri: str
    endpoint: str | None

    @classmethod
    def of(cls, config: TrainerConfig) -> FailureTarget:
        return cls(config.output_uri, config.spec.output.endpoint)

    @classmethod
    def from_raw(cls, path: Path) -> FailureTarget | None:
        """Best effort for a config that failed validation: if its outputUri (and endpoint) can
        still be read, the operator learns why from progress.json, not only from the pod."""
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("outputUri"), str):
            return None
        spec = raw.get("spec")
        output = spec.get("output") if isinstance(spec, dict) else None
        endpoint = output.get("endpoint") if isinstance(output, dict) else None
        return cls(raw["outputUri"], endpoint if isinstance(endpoint, str) else None)


def record_failure(target: FailureTarget | None, place: ProcessPlace, message: str) -> None:
    """Best effort: state=failed and lastError in progress.json (rank 0, S3 reachable), never
    in a folder another LoRAJob owns."""
    if target is None or not place.is_main:
        return
    try:
        store = S3Store.from_env(target.endpoint)
        store.retries = 1
        run = S3Location.parse(target.output_uri)
        if not may_record_failure(store, run):
            return
        reporter = ProgressReporter(store, run)
        previous = store.get_json(run.child("progress.json"))
        if isinstance(previous, dict):
            with contextlib.suppress(ValueError):
                reporter.progress = Progress.model_validate(previous)
        reporter.update(state="failed", last_error=message[:4000])
        reporter.publish()
    except (StorageError, ValueError):
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lora-trainer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="TrainerConfig YAML (default: $LORAJOB_CONFIG or /etc/lorajob/config.yaml)"
    )
    return parser.parse_args(argv)


def fail(target: FailureTarget | None, place: ProcessPlace, message: str, code: int) -> int:
    print(f"lora-trainer: error: {message}", file=sys.stderr, flush=True)
    if place.is_main:
        write_termination_message(message)
    record_failure(target, place, message)
    return code


def record_exit_code(code: int, place: ProcessPlace) -> None:
    """Under the launcher, leave the exit code where it can read it (torchrun hides it)."""
    folder = os.environ.get(ENV_EXIT_CODE_DIR)
    if folder and code != EXIT_OK:
        with contextlib.suppress(OSError):
            (Path(folder) / f"exit-{place.rank}").write_text(str(code))


def enable_stack_dumps() -> None:
    """`kill -USR1 <pid>` (or `kubectl exec ... kill -USR1 1`) prints every thread's stack to
    stderr: how a hung rendezvous or collective is diagnosed without stopping the run."""
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def main(argv: list[str] | None = None) -> int:
    enable_stack_dumps()
    place = ProcessPlace(0, 0, 1)
    code = _run(argv)
    with contextlib.suppress(TrainerError):
        place = ProcessPlace.from_env()
    record_exit_code(code, place)
    return process_exit_code(code)


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    target: FailureTarget | None = None
    place = ProcessPlace(0, 0, 1)
    try:
        place = ProcessPlace.from_env()
        path = config_path(args.config)
        target = FailureTarget.from_raw(path)
        config = load_trainer_config(path)
        target = FailureTarget.of(config)
        from .train import run_training

        run_training(config, place)
    except Preempted as exc:  # progress.json already says so (train.stop_preempted)
        print(f"lora-trainer: {exc.message}", file=sys.stderr, flush=True)
        if place.is_main:
            write_termination_message(exc.message)
        return exc.exit_code
    except TrainerError as exc:
        return fail(target, place, exc.message, exc.exit_code)
    except KeyboardInterrupt:
        return fail(target, place, "interrupted", EXIT_TRANSIENT)
    except Exception as exc:
        disk = local_disk_fault(exc)  # a full or unwritable scratch disk: exit 3, not a retry
        if disk is not None:
            return fail(target, place, disk.message, disk.exit_code)
        if "out of memory" in str(exc).lower():
            message = (
                f"out of memory: {str(exc).splitlines()[0]}; lower training.microBatchSize or "
                "dataset.maxSeqLength, enable gradientCheckpointing, or use more/larger GPUs"
            )
            return fail(target, place, message, EXIT_INVALID_CONFIG)
        traceback.print_exc()
        return fail(target, place, f"unexpected {type(exc).__name__}: {exc}", EXIT_TRANSIENT)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
