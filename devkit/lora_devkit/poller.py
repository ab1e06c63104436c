"""The polling loop the local stand-ins for cluster controllers share (the executor, the KServe
stand-in): a daemon thread that runs `reconcile_once()` every `poll_seconds` until stopped,
recording API and OS errors (the API server may be going away) rather than dying."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Self

from .emulator import ApiError
from .service import Service

log = logging.getLogger(__name__)


class Poller(Service):
    """Subclasses set `workdir`, `poll_seconds` and `thread_name`, and write `reconcile_once()`
    (one pass, under `_lock`) and `release()` (stop what the passes started)."""

    thread_name = "poller"
    workdir: Path
    poll_seconds: float

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile_once(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            self.release()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except (ApiError, OSError) as exc:  # the API server may be going away
                self.errors.append(str(exc))
                log.debug("%s pass failed: %s", self.thread_name, exc)
            self._stop.wait(self.poll_seconds)
