"""Follow a LoRAJob through the API as a user would: phase changes, a live progress line from
`status.progress`, pod retries, and (with `--kill-a-pod`) one SIGKILLed trainer pod once the first
checkpoint is saved.

Why poll the LoRAJob (not S3 or the executor): what is printed is exactly what the operator
recorded, so the demo shows the operator working, not a side channel.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from lora_operator.controller.manifests import run_name

from ..emulator import ApiError, RestClient
from ..executor import LocalExecutor
from .summary import RESUMED
from .workspace import DemoError

LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
# Node 1, a worker node: the case the c10d rendezvous exists for. Node 0's agent (the rendezvous
# host) outlives its worker's failed collective, restarts it and waits; the Job retries index 1
# only, the new pod joins node 0's rendezvous, and every rank resumes from the latest checkpoint.
KILL_INDEX = 1


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(progress: dict[str, Any]) -> str:
    """'step 12/40 (30%)  loss 5.8123  eval 5.9  ETA 14s' from status.progress."""
    step, total = int(progress.get("step") or 0), int(progress.get("totalSteps") or 0)
    if progress.get("state") == "starting":
        return "trainer starting: loading the model and data, joining the rendezvous"
    parts = [f"step {step}/{total or '?'}" + (f" ({100 * step / total:.0f}%)" if total else "")]
    if progress.get("loss") is not None:
        parts.append(f"loss {float(progress['loss']):.4f}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval {float(progress['evalLoss']):.4f}")
    if progress.get("state") == "running":
        parts.append(f"ETA {format_eta(progress.get('etaSeconds'))}")
    return "  ".join(parts)


@dataclass
class Follower:
    """Polls one LoRAJob until it succeeds (and serving is recorded) or fails."""

    client: RestClient
    namespace: str
    name: str
    executor: LocalExecutor
    operator: subprocess.Popen[bytes]
    out: TextIO
    kill_a_pod: bool = False
    poll_seconds: float = 0.5
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    phase: str | None = None
    restarts: int = 0
    killed: dict[str, Any] | None = None
    resumed: set[str] = field(default_factory=set)
    _line: str = ""
    _live: bool = False

    def follow(self, timeout_s: float) -> dict[str, Any]:
        """The final LoRAJob object; DemoError on failure, a dead operator or the timeout."""
        self.started = self.started or self.clock()
        self._live = self.out.isatty()
        succeeded_at: float | None = None
        while True:
            if self.operator.poll() is not None:
                raise DemoError(f"the operator exited with code {self.operator.returncode}")
            obj = self._get()
            status = (obj or {}).get("status") or {}
            self._show(status)
            if status.get("phase") == "Failed":
                raise DemoError(f"the LoRAJob failed: {status.get('message')}")
            if status.get("phase") == "Succeeded":
                succeeded_at = succeeded_at or self.clock()
                serving = ((obj or {}).get("spec") or {}).get("serving") or {}
                waited = self.clock() - succeeded_at
                if status.get("inferenceService") or not serving.get("enabled") or waited > 15:
                    self._end_line()
                    assert obj is not None
                    return obj
            if self.clock() - self.started > timeout_s:
                self._end_line()
                raise DemoError(
                    f"timed out after {timeout_s:.0f}s (phase {self.phase}, "
                    f"progress {status.get('progressSummary')})"
                )
            time.sleep(self.poll_seconds)

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.client.get(LORAJOBS, self.namespace, self.name)
        except (ApiError, OSError):
            return None  # one failed poll is not a failure

    # -- output

    def _stamp(self) -> str:
        return f"[{self.clock() - self.started:5.1f}s]"

    def say(self, message: str) -> None:
        self._end_line()
        print(f"{self._stamp()} {message}", file=self.out, flush=True)

    def _end_line(self) -> None:
        if self._live and self._line:
            print(file=self.out, flush=True)
        self._line = ""

    def _show(self, status: dict[str, Any]) -> None:
        phase = status.get("phase")
        if phase and phase != self.phase:
            self.phase = phase
            self.say(f"phase {phase}: {status.get('message') or ''}".rstrip(": "))
        restarts = int(status.get("restarts") or 0)
        if restarts > self.restarts:
            self.restarts = restarts
            self.say(f"a trainer pod failed ({restarts} so far): the Job retries it")
        progress = status.get("progress") or {}
        if progress:
            line = progress_line(progress)
            if line != self._line:
                if self._live:
                    print(f"\r{self._stamp()} {line}\033[K", end="", file=self.out, flush=True)
                else:
                    print(f"{self._stamp()} {line}", file=self.out, flush=True)
                self._line = line
        checkpoint = status.get("latestCheckpoint") or progress.get("latestCheckpoint")
        mid_run = int(progress.get("step") or 0) < int(progress.get("totalSteps") or 0)
        if self.kill_a_pod and self.killed is None and checkpoint and mid_run:
            self._kill(status, str(checkpoint))
        if self.killed is not None:
            self._announce_resumes()

    def _announce_resumes(self) -> None:
        """Say when a retried pod's trainer reports resuming from a checkpoint."""
        for path in sorted(self.executor.log_dir.glob("*.log")):
            if path.name in self.resumed:
                continue
            found = RESUMED.search(path.read_text(errors="replace"))
            if found:
                self.resumed.add(path.name)
                pod = path.stem.split("_", 1)[-1]
                self.say(f"pod {pod}: the trainer resumes from checkpoint-{found.group(1)}")

    def _kill(self, status: dict[str, Any], checkpoint: str) -> None:
        run_id = status.get("currentRun")
        if not run_id:
            return
        job = run_name(self.name, str(run_id))
        if self.executor.kill_pod(self.namespace, job, KILL_INDEX):
            step = int((status.get("progress") or {}).get("step") or 0)
            self.killed = {"job": job, "index": KILL_INDEX, "step": step, "after": checkpoint}
            self.say(
                f"--kill-a-pod: SIGKILLed the trainer of pod {job}-{KILL_INDEX} at step {step} "
                f"(latest checkpoint {checkpoint.rsplit('/', 1)[-1]})"
            )
