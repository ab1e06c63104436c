"""Live progress for the operator and the user: progress.json (latest values) and metrics.jsonl
(one record per log step) in the run's S3 folder. Only rank 0 reports.

A failed metrics write never stops training: it is logged and retried at the next log step.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lora_contract.layout import LOSS_PLOT, METRICS_FILE, PROGRESS_FILE, S3Location
from lora_contract.storage import S3Store, StorageError
from lora_contract.timestamps import now_iso
from lora_contract.types import Progress

from .plot import loss_plot_png


def log(message: str) -> None:
    print(f"[lora-trainer] {message}", file=sys.stderr, flush=True)


class ProgressReporter:
    """Keeps the run's Progress and metric records and mirrors them to S3."""

    def __init__(self, store: S3Store | None, run: S3Location, enabled: bool = True) -> None:
        self.store = store
        self.run = run
        self.enabled = enabled and store is not None
        self.progress = Progress(state="starting")
        self.records: list[dict[str, Any]] = []
        self.loss_path: str | None = None  # lora_trainer.loss.LossPath, in every loss record
        self.activation_offload: str | None = None  # lora_trainer.offload.OffloadPath, likewise

    def load_previous_records(self, up_to_step: int) -> None:
        """On resume, keep the metrics logged before the checkpoint (drop the lost tail)."""
        if not self.enabled or self.store is None:
            return
        try:
            data = self.store.get_bytes(self.run.child(METRICS_FILE))
        except StorageError as exc:
            log(f"could not read previous metrics: {exc}")
            return
        for line in (data or b"").decode().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and int(record.get("step", 0)) <= up_to_step:
                self.records.append(record)

    def update(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self.progress, name, value)
        self.progress.updated_at = now_iso()

    def publish(self) -> str | None:
        """Write progress.json; returns an error message instead of raising."""
        if not self.enabled or self.store is None:
            return None
        self.progress.updated_at = now_iso()
        try:
            self.store.put_json(self.run.child(PROGRESS_FILE), self.progress.to_wire())
        except StorageError as exc:
            log(f"could not write progress.json: {exc}")
            return str(exc)
        return None

    def amend_record(self, step: int, fields: dict[str, Any]) -> None:
        """Add fields to the record of `step` just logged (an objective's own metrics)."""
        if self.records and self.records[-1].get("step") == step:
            self.records[-1].update(fields)
            self._write_records()

    def add_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._write_records()

    def _write_records(self) -> None:
        if not self.enabled or self.store is None:
            return
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        try:
            self.store.put_bytes(
                self.run.child(METRICS_FILE), body.encode(), content_type="application/x-ndjson"
            )
        except StorageError as exc:
            log(f"could not write metrics.jsonl: {exc}")

    def publish_plot(self, title: str) -> None:
        if not self.enabled or self.store is None or not self.records:
            return
        try:
            png = loss_plot_png(self.records, title)
            self.store.put_bytes(self.run.child(LOSS_PLOT), png, content_type="image/png")
        except StorageError as exc:
            log(f"could not write loss.png: {exc}")
