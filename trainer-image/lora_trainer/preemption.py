"""Preemption: a SIGTERM (Kueue preemption, node drain, spot reclaim) becomes a checkpoint at
one step all ranks agree on, then exit code EXIT_PREEMPTED, well inside the pod's grace period.

How a rank learns of it: its own SIGTERM (a single-process pod, or a signal sent to every
process), or the stop file the launcher writes into the exit-code folder when the pod's main
process gets the SIGTERM (torchrun is started with SIGTERM ignored, so it neither kills the
workers after its own short timeout nor restarts them). At each step end the ranks all-reduce
MAX of "stop requested": one rank's signal stops all of them at the same step, so no rank is
left waiting in a collective, and rank 0 saves that step's checkpoint (same callback, same
manifest, same upload as a regular one).

Under torchrun a preempted worker exits 0 (a failed worker would be restarted by torchrun's
agent and train on) and leaves EXIT_PREEMPTED in the exit-code folder, which the launcher
returns; alone (no launcher folder), the process exits EXIT_PREEMPTED itself.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lora_contract.pod import EXIT_OK, EXIT_PREEMPTED

from .errors import TrainerError
from .metrics import log
from .settings import ENV_EXIT_CODE_DIR

STOP_FILE = "preempt"  # in the launcher's exit-code folder: "the pod got SIGTERM"


class Preempted(TrainerError):
    """Training stopped on SIGTERM at `step`, with a checkpoint there (or none to save)."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint_saved: bool) -> None:
        saved = f"checkpoint-{step} saved" if checkpoint_saved else "no new checkpoint"
        super().__init__(
            f"preempted (SIGTERM) at step {step}: {saved}; the restarted pod resumes from the "
            "latest complete checkpoint"
        )
        self.step = step


class StopRequest:
    """Set by SIGTERM (idempotent: repeated signals change nothing) or by the launcher's stop
    file; read at each step end."""

    def __init__(self, folder: str | None = None) -> None:
        self._event = threading.Event()
        self.stop_file = Path(folder) / STOP_FILE if folder else None

    @classmethod
    def from_env(cls) -> StopRequest:
        return cls(os.environ.get(ENV_EXIT_CODE_DIR) or None)

    def set(self) -> None:
        self._event.set()

    def requested(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self._event.set()
        return self._event.is_set()

    def install(self) -> None:
        """Handle SIGTERM in this process (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if not self._event.is_set():
                log("SIGTERM: finishing this step, then checkpointing and exiting")
            self.set()

        signal.signal(signal.SIGTERM, on_sigterm)


def any_rank(flag: bool, device: Any = None) -> bool:
    """True when `flag` is true on any rank (all-reduce MAX; just `flag` alone)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def process_exit_code(code: int) -> int:
    """What this process exits with: under the launcher (exit-code folder set) a preemption
    exits 0, so torchrun does not restart the worker; the folder carries EXIT_PREEMPTED."""
    if code == EXIT_PREEMPTED and os.environ.get(ENV_EXIT_CODE_DIR):
        return EXIT_OK
    return code
