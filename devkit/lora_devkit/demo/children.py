"""Child processes of the demo (the operator) and the signal handling that cleans them up.

Why: the demo starts an operator process and, through the executor, trainer process groups. On
success, failure, Ctrl-C or SIGTERM all of them must go, so each child gets its own process group
(killed as a whole) and SIGINT/SIGTERM become an exception that unwinds every `finally`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the demo unwinds and cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into `Interrupted` for the duration (then restore the handlers)."""

    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:  # already unwinding: a second Ctrl-C must not abort the cleanup
            print("lorajob-demo: still stopping child processes...", file=sys.stderr, flush=True)
            return
        received.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def request_stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group without waiting (it shuts down while we go on)."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL whatever is left after the grace period."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace_seconds)
    _signal_group(process.pid, signal.SIGKILL)  # stragglers in the group, if any
    if process.poll() is None:
        process.wait(5)


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors, so C-level and already-bound
    logging handlers too) to `path`: library progress bars and warnings go to the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextmanager
def log_to(path: Path, logger_name: str) -> Iterator[None]:
    """A logger's records, with timestamps, into a file for the duration."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
