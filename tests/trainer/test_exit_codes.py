"""The trainer's exit code is its contract with Kubernetes: 0 done, 3 bad config or data (the Job's
podFailurePolicy fails the Job at once, no retries), 75 transient (the pod is retried and resumes
from the latest checkpoint). Every path through `main()` is pinned here, with what it leaves
behind: the termination message (LORAJOB_TERMINATION_LOG), progress.json state=failed + lastError
(rank 0, S3 reachable), the exit-code file the launcher reads (LORAJOB_EXIT_CODE_DIR) and the
`lora-trainer: error:` line on stderr.

`main()` runs in this process; training itself is replaced by a stand-in `lora_trainer.train`
module whose `run_training` does what each test needs (raise, record its arguments), so these
tests take milliseconds and never import torch.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract import pod
from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_TRANSIENT
from lora_contract.storage import S3Store
from lora_contract.types import Progress, TrainerConfig
from lora_devkit.s3server import S3Server, free_port
from lora_trainer import main as trainer_main
from lora_trainer.config import ProcessPlace
from lora_trainer.errors import InvalidConfigError, TrainerError, TransientError
from lora_trainer.main import FailureTarget, enable_stack_dumps, main

from .conftest import BUCKET, base_spec

OOM_HINT = (
    "lower training.microBatchSize or dataset.maxSeqLength, enable gradientCheckpointing, "
    "or use more/larger GPUs"
)
# What every process of a pod may have set that would change where main() looks or writes.
POD_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    pod.ENV_CONFIG,
    pod.ENV_S3_ENDPOINT,
    pod.ENV_ACCESS_KEY,
    pod.ENV_SECRET_KEY,
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "LORAJOB_S3_RETRIES",
    "LORAJOB_EXIT_CODE_DIR",
    "LORAJOB_TERMINATION_LOG",
)


class ShardMismatchError(Exception):
    """A bug-shaped failure the trainer has no name for."""


@dataclass
class Pod:
    """One trainer process's view of its pod: env, mounted files, and the run's S3 folder."""

    tmp: Path
    s3: S3Server
    monkeypatch: pytest.MonkeyPatch
    termination_log: Path
    exit_dir: Path
    location: S3Location = field(
        default_factory=lambda: S3Location(BUCKET, f"exit-codes/{uuid.uuid4().hex[:8]}/r1")
    )
    calls: list[tuple[TrainerConfig, ProcessPlace]] = field(default_factory=list)

    def document(self, **output: Any) -> dict[str, Any]:
        """A TrainerConfig as the operator renders it (the dataset is never read here)."""
        spec = base_spec(self.tmp / "train.jsonl", "prompt-completion")
        spec["output"].update(output)
        return {
            "jobName": "job",
            "namespace": "default",
            "runId": "r1",
            "outputUri": self.location.uri,
            "spec": spec,
        }

    def config(self, document: Any = None, text: str | None = None) -> Path:
        path = self.tmp / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(document or self.document()))
        return path

    def training(self, behaviour: Callable[[], None] = lambda: None) -> None:
        """Stand in for `lora_trainer.train`: record the call, then `behaviour()`."""

        def run_training(config: TrainerConfig, place: ProcessPlace) -> None:
            self.calls.append((config, place))
            behaviour()

        module = types.ModuleType("lora_trainer.train")
        module.run_training = run_training  # type: ignore[attr-defined]
        self.monkeypatch.setitem(sys.modules, "lora_trainer.train", module)

    def fails_with(self, exc: BaseException) -> None:
        def behaviour() -> None:
            raise exc

        self.training(behaviour)

    def main(self, config: Path) -> int:
        return main(["--config", str(config)])

    @property
    def termination(self) -> str:
        return self.termination_log.read_text()

    def exit_files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.exit_dir.iterdir())}

    def progress(self, store: S3Store) -> Progress | None:
        data = store.get_json(self.location.child("progress.json"))
        return None if data is None else Progress.model_validate(data)


@pytest.fixture
def trainer_pod(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pod]:
    for name in POD_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    termination = tmp_path / "termination-log"
    termination.write_text("")  # Kubernetes creates the file; the trainer only writes it
    exit_dir = tmp_path / "exit-codes"
    exit_dir.mkdir()
    monkeypatch.setenv("LORAJOB_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("LORAJOB_EXIT_CODE_DIR", str(exit_dir))
    # The default config path must never be what a test reads.
    monkeypatch.setenv(pod.ENV_CONFIG, str(tmp_path / "not-this-one.yaml"))
    yield Pod(tmp_path, s3, monkeypatch, termination, exit_dir)
    if hasattr(signal, "SIGUSR1"):  # main() registered the stack dump on this test's stderr
        faulthandler.unregister(signal.SIGUSR1)


# --- success -----------------------------------------------------------------------------------


def test_success_exits_0_and_leaves_nothing_behind(
    trainer_pod: Pod, store: S3Store, capfd: pytest.CaptureFixture[str]
) -> None:
    trainer_pod.training()
    # --config wins over $LORAJOB_CONFIG (which points at a missing file here).
    assert trainer_pod.main(trainer_pod.config()) == EXIT_OK
    [(config, place)] = trainer_pod.calls
    assert config.output_uri == trainer_pod.location.uri and config.job_name == "job"
    assert place == ProcessPlace(0, 0, 1)
    assert trainer_pod.exit_files() == {}  # the launcher trusts torchrun's own 0
    assert trainer_pod.termination == ""
    assert trainer_pod.progress(store) is None  # main() itself writes no progress on success
    assert "error" not in capfd.readouterr().err


def test_config_comes_from_env_without_the_flag(trainer_pod: Pod) -> None:
    trainer_pod.training()
    trainer_pod.monkeypatch.setenv(pod.ENV_CONFIG, str(trainer_pod.config()))
    assert main([]) == EXIT_OK
    assert len(trainer_pod.calls) == 1


def test_torchrun_place_reaches_training(trainer_pod: Pod) -> None:
    trainer_pod.training()
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        trainer_pod.monkeypatch.setenv(name, value)
    assert trainer_pod.main(trainer_pod.config()) == EXIT_OK
    assert [place for _, place in trainer_pod.calls] == [ProcessPlace(3, 1, 4)]


# --- failures during training: the exception decides the code -----------------------------------

OOM = RuntimeError(
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)\n"
    "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF"
)

FAILURES = [
    pytest.param(
        InvalidConfigError("dataset.source /data/x.jsonl: file not found"),
        EXIT_INVALID_CONFIG,
        "dataset.source /data/x.jsonl: file not found",
        id="invalid-config",
    ),
    pytest.param(
        TransientError("S3 put failed for s3://b/k: SlowDown"),
        EXIT_TRANSIENT,
        "S3 put failed for s3://b/k: SlowDown",
        id="transient",
    ),
    pytest.param(
        TrainerError("checkpoint 8 upload failed"),
        EXIT_TRANSIENT,
        "checkpoint 8 upload failed",
        id="trainer-error-defaults-to-transient",
    ),
    pytest.param(
        ShardMismatchError("rank 1 has 3 shards, rank 0 has 4"),
        EXIT_TRANSIENT,
        "unexpected ShardMismatchError: rank 1 has 3 shards, rank 0 has 4",
        id="unexpected-exception",
    ),
    pytest.param(KeyboardInterrupt(), EXIT_TRANSIENT, "interrupted", id="keyboard-interrupt"),
    # CUDA OOM: retrying the same config on the same GPUs cannot help, so it is a bad config,
    # with the first line of torch's message and what to change.
    pytest.param(
        OOM,
        EXIT_INVALID_CONFIG,
        "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total "
        f"capacity); {OOM_HINT}",
        id="cuda-out-of-memory",
    ),
    pytest.param(
        MemoryError("DefaultCPUAllocator: Out Of Memory on host"),
        EXIT_INVALID_CONFIG,
        f"out of memory: DefaultCPUAllocator: Out Of Memory on host; {OOM_HINT}",
        id="out-of-memory-any-case",
    ),
]


@pytest.mark.parametrize(("exc", "code", "message"), FAILURES)
def test_failure_in_training(
    trainer_pod: Pod,
    store: S3Store,
    capfd: pytest.CaptureFixture[str],
    exc: BaseException,
    code: int,
    message: str,
) -> None:
    trainer_pod.fails_with(exc)
    assert trainer_pod.main(trainer_pod.config()) == code
    assert trainer_pod.termination == message
    assert f"lora-trainer: error: {message}\n" in capfd.readouterr().err
    progress = trainer_pod.progress(store)
    assert progress is not None and progress.state == "failed"
    assert progress.last_error == message
    assert trainer_pod.exit_files() == {"exit-0": str(code)}


def test_trainer_error_message_is_the_exception_text() -> None:
    exc = InvalidConfigError("lora.r must be > 0")
    assert exc.message == str(exc) == "lora.r must be > 0"
    assert exc.args == ("lora.r must be > 0",)
    assert (TrainerError.exit_code, TransientError.exit_code) == (EXIT_TRANSIENT,) * 2
    assert InvalidConfigError.exit_code == EXIT_INVALID_CONFIG


def test_sigint_while_training_is_transient(trainer_pod: Pod, store: S3Store) -> None:
    """Ctrl-C (SIGINT) arrives as KeyboardInterrupt: retried, never a failed Job."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    trainer_pod.training(lambda: signal.raise_signal(signal.SIGINT))
    try:
        code = trainer_pod.main(trainer_pod.config())
    except KeyboardInterrupt:
        pytest.fail("main() let KeyboardInterrupt through")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == EXIT_TRANSIENT
    assert trainer_pod.termination == "interrupted"
    progress = trainer_pod.progress(store)
    assert progress is not None and progress.last_error == "interrupted"


def test_long_messages_are_cut_to_4000_characters(
    trainer_pod: Pod, store: S3Store, capfd: pytest.CaptureFixture[str]
) -> None:
    """Kubernetes keeps at most 4096 bytes of a termination message; stderr gets it all."""
    message = "x" * 3990 + "0123456789abcdefghij"
    trainer_pod.fails_with(TransientError(message))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_TRANSIENT
    assert trainer_pod.termination == message[:4000]
    progress = trainer_pod.progress(store)
    assert progress is not None and progress.last_error == message[:4000]
    assert message in capfd.readouterr().err


# --- failures before training: config and env -----------------------------------------------


def test_config_that_does_not_parse(trainer_pod: Pod, store: S3Store) -> None:
    path = trainer_pod.config(text="outputUri: s3://b/r\nspec: [unclosed\n")
    assert trainer_pod.main(path) == EXIT_INVALID_CONFIG
    assert trainer_pod.termination.startswith(f"trainer config {path} cannot be read: ")
    assert trainer_pod.exit_files() == {"exit-0": "3"}
    assert trainer_pod.calls == []


@pytest.mark.parametrize(
    "text", ["- a list\n- not a mapping\n", "jobName: job\n"], ids=["not-a-mapping", "no-uri"]
)
def test_config_without_a_readable_output_uri_still_exits_3(trainer_pod: Pod, text: str) -> None:
    assert trainer_pod.main(trainer_pod.config(text=text)) == EXIT_INVALID_CONFIG
    assert trainer_pod.termination.startswith("trainer config ")
    assert trainer_pod.exit_files() == {"exit-0": "3"}


def test_missing_config_file(trainer_pod: Pod) -> None:
    assert main([]) == EXIT_INVALID_CONFIG
    assert "not-this-one.yaml not found" in trainer_pod.termination


def test_invalid_config_is_recorded_at_the_specs_endpoint(trainer_pod: Pod, store: S3Store) -> None:
    """The config fails validation, yet its outputUri and spec.output.endpoint can be read: with
    no S3_ENDPOINT in the pod, the operator still finds why in progress.json at that endpoint."""
    trainer_pod.monkeypatch.delenv(pod.ENV_S3_ENDPOINT)
    document = trainer_pod.document(endpoint=trainer_pod.s3.endpoint)
    document["spec"]["dataset"]["format"] = "alpaca"
    assert trainer_pod.main(trainer_pod.config(document)) == EXIT_INVALID_CONFIG
    assert "spec.dataset.format" in trainer_pod.termination
    progress = trainer_pod.progress(store)
    assert progress is not None and progress.state == "failed"
    assert progress.last_error == trainer_pod.termination


def test_training_failure_is_recorded_at_the_specs_endpoint(
    trainer_pod: Pod, store: S3Store
) -> None:
    trainer_pod.monkeypatch.delenv(pod.ENV_S3_ENDPOINT)
    trainer_pod.fails_with(TransientError("lost the rendezvous"))
    path = trainer_pod.config(trainer_pod.document(endpoint=trainer_pod.s3.endpoint))
    assert trainer_pod.main(path) == EXIT_TRANSIENT
    progress = trainer_pod.progress(store)
    assert progress is not None and progress.last_error == "lost the rendezvous"


def test_bad_rank_env_is_a_bad_config_reported_as_rank_0(trainer_pod: Pod) -> None:
    """RANK that is not an integer: exit 3 (the Job fails), reported by the process as if it
    were rank 0, so the message reaches the pod status and the launcher finds exit-0."""
    trainer_pod.monkeypatch.setenv("RANK", "zero")
    assert trainer_pod.main(trainer_pod.config()) == EXIT_INVALID_CONFIG
    assert trainer_pod.termination == "env RANK must be an integer (got 'zero')"
    assert trainer_pod.exit_files() == {"exit-0": "3"}
    assert trainer_pod.calls == []


# --- ranks --------------------------------------------------------------------------------------


def test_other_ranks_leave_the_reporting_to_rank_0(trainer_pod: Pod, store: S3Store) -> None:
    """Rank 1's exit code reaches the launcher (exit-1); the termination message and
    progress.json are rank 0's to write."""
    trainer_pod.monkeypatch.setenv("RANK", "1")
    trainer_pod.monkeypatch.setenv("WORLD_SIZE", "2")
    trainer_pod.fails_with(InvalidConfigError("dataset is empty"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_INVALID_CONFIG
    assert trainer_pod.exit_files() == {"exit-1": "3"}
    assert trainer_pod.termination == ""
    assert trainer_pod.progress(store) is None


# --- progress.json ------------------------------------------------------------------------------


def test_failure_keeps_the_progress_already_reported(trainer_pod: Pod, store: S3Store) -> None:
    before = Progress(state="running", step=7, total_steps=24, latest_checkpoint="checkpoint-6")
    store.put_json(trainer_pod.location.child("progress.json"), before.to_wire())
    trainer_pod.fails_with(TransientError("node lost"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_TRANSIENT
    after = trainer_pod.progress(store)
    assert after is not None
    assert (after.state, after.last_error) == ("failed", "node lost")
    assert (after.step, after.total_steps, after.latest_checkpoint) == (7, 24, "checkpoint-6")


def test_unusable_previous_progress_does_not_stop_the_failure_report(
    trainer_pod: Pod, store: S3Store
) -> None:
    store.put_json(trainer_pod.location.child("progress.json"), {"state": "exploded", "step": 3})
    trainer_pod.fails_with(TransientError("node lost"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_TRANSIENT
    after = trainer_pod.progress(store)
    assert after is not None and (after.state, after.last_error) == ("failed", "node lost")


def test_unreachable_s3_does_not_change_or_delay_the_exit(
    trainer_pod: Pod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the failure is best effort: one attempt, no retry back-off before the exit."""
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    monkeypatch.setenv(pod.ENV_S3_ENDPOINT, f"http://127.0.0.1:{free_port()}")
    trainer_pod.fails_with(InvalidConfigError("bad data"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_INVALID_CONFIG
    assert trainer_pod.termination == "bad data"
    assert trainer_pod.exit_files() == {"exit-0": "3"}
    assert sleeps == []


# --- where the files go -------------------------------------------------------------------------


def test_termination_log_is_only_written_where_kubernetes_mounted_it(
    trainer_pod: Pod, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-log"
    trainer_pod.monkeypatch.setenv("LORAJOB_TERMINATION_LOG", str(missing))
    trainer_pod.fails_with(TransientError("x"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_TRANSIENT
    assert not missing.exists()


def test_unwritable_termination_log_and_exit_dir_do_not_change_the_code(
    trainer_pod: Pod, tmp_path: Path
) -> None:
    trainer_pod.monkeypatch.setenv("LORAJOB_TERMINATION_LOG", str(tmp_path))  # a directory
    trainer_pod.monkeypatch.setenv("LORAJOB_EXIT_CODE_DIR", str(tmp_path / "gone"))
    trainer_pod.fails_with(InvalidConfigError("x"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_INVALID_CONFIG


def test_no_exit_code_file_without_the_launcher(trainer_pod: Pod) -> None:
    trainer_pod.monkeypatch.delenv("LORAJOB_EXIT_CODE_DIR")
    trainer_pod.fails_with(InvalidConfigError("x"))
    assert trainer_pod.main(trainer_pod.config()) == EXIT_INVALID_CONFIG
    assert list(trainer_pod.exit_dir.iterdir()) == []


# --- FailureTarget.from_raw: what a config that fails validation still tells -------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "outputUri: s3://b/run\nspec: {output: {endpoint: 'http://minio:9000'}}\n",
            FailureTarget("s3://b/run", "http://minio:9000"),
        ),
        ("outputUri: s3://b/run\n", FailureTarget("s3://b/run", None)),
        ("outputUri: s3://b/run\nspec: [1, 2]\n", FailureTarget("s3://b/run", None)),
        ("outputUri: s3://b/run\nspec: {output: s3}\n", FailureTarget("s3://b/run", None)),
        ("outputUri: s3://b/run\nspec: {output: {}}\n", FailureTarget("s3://b/run", None)),
        (
            "outputUri: s3://b/run\nspec: {output: {endpoint: 9000}}\n",
            FailureTarget("s3://b/run", None),
        ),
        ("outputUri: 5\n", None),
        ("spec: {output: {endpoint: 'http://minio:9000'}}\n", None),
        ("- outputUri\n", None),
        ("outputUri: [unclosed\n", None),
    ],
)
def test_failure_target_from_raw(tmp_path: Path, text: str, expected: FailureTarget | None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert FailureTarget.from_raw(path) == expected


def test_failure_target_from_a_missing_file(tmp_path: Path) -> None:
    assert FailureTarget.from_raw(tmp_path / "missing.yaml") is None


# --- the command line and the stack-dump signal -----------------------------------------------


def test_help_names_the_command_and_the_default_config(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capfd.readouterr().out.split())
    assert out.startswith("usage: lora-trainer [-h] [--config CONFIG] ")
    assert (trainer_main.__doc__ or "").splitlines()[0] in out
    assert out.endswith(
        f"--config CONFIG TrainerConfig YAML (default: ${pod.ENV_CONFIG} or {pod.CONFIG_PATH})"
    )


def _dump_on_sigusr1(capfd: pytest.CaptureFixture[str], register: Callable[[], None]) -> str:
    """Call `register`, send this process SIGUSR1, return what reached stderr. A Python handler
    stands by, so an unregistered SIGUSR1 is a no-op rather than the end of the test run."""
    parked = threading.Event()
    done = threading.Event()

    def parked_worker_thread() -> None:
        parked.set()
        done.wait(10)

    worker = threading.Thread(target=parked_worker_thread, daemon=True)
    faulthandler.unregister(signal.SIGUSR1)  # a registration left by an earlier main() call
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    worker.start()
    parked.wait(5)
    capfd.readouterr()
    try:
        register()
        signal.raise_signal(signal.SIGUSR1)
        time.sleep(0.05)
        return capfd.readouterr().err
    finally:
        faulthandler.unregister(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, previous)
        done.set()
        worker.join(5)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_dumps_every_threads_stack(capfd: pytest.CaptureFixture[str]) -> None:
    """`kill -USR1 1` in a hung pod shows where each thread is (a stuck collective)."""
    err = _dump_on_sigusr1(capfd, enable_stack_dumps)
    assert "parked_worker_thread" in err
    assert "_dump_on_sigusr1" in err


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_stack_dumps_are_left_alone_off_the_main_thread(capfd: pytest.CaptureFixture[str]) -> None:
    """main() called from another thread (embedded, as in tests) leaves the process's signal
    handling to its owner."""

    def from_a_thread() -> None:
        thread = threading.Thread(target=enable_stack_dumps)
        thread.start()
        thread.join()

    assert "parked_worker_thread" not in _dump_on_sigusr1(capfd, from_a_thread)
