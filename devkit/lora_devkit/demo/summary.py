"""What the demo reports at the end: read back from the API and S3, printed for people and written
as JSON (`--summary-json`) for tests.

Why read everything back instead of trusting the run: the summary is evidence that the operator
recorded the adapter, that the adapter files are really in the bucket, and that the
InferenceService points at them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lora_contract.layout import FINAL_DIR, LOSS_PLOT, METRICS_FILE, S3Location, run_location
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import LoRAJob

from ..emulator import RestClient

INFERENCE_SERVICES = "serving.kserve.io/v1beta1/inferenceservices"
RESUMED = re.compile(r"resuming from checkpoint-(\d+)")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def recorded_run(status: dict[str, Any], run_id: str) -> S3Location | None:
    """Where the operator recorded the run (its RunRecord's outputURI): what the trainer wrote."""
    for run in status.get("runs") or []:
        if run.get("id") == run_id and run.get("outputURI"):
            return S3Location.parse(str(run["outputURI"]))
    return None


def loss_records(store: S3Store, run: S3Location) -> list[dict[str, Any]]:
    """The training-loss records of metrics.jsonl, in step order."""
    try:
        data = store.get_bytes(run.child(METRICS_FILE)) or b""
    except StorageError:
        return []
    records = []
    for line in data.decode().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("loss") is not None:
            records.append(record)
    return sorted(records, key=lambda r: int(r.get("step", 0)))


def resumed_steps(log_dir: Path) -> list[int]:
    """Checkpoint steps that trainer pods said they resumed from (from the pods' logs)."""
    steps: set[int] = set()
    for path in sorted(log_dir.glob("*.log")):
        steps.update(int(m) for m in RESUMED.findall(path.read_text(errors="replace")))
    return sorted(steps)


def inference_service(client: RestClient, namespace: str, name: str | None) -> dict[str, Any]:
    """Name, --lora-modules value and storage URIs of the InferenceService (empty if none)."""
    if not name:
        return {}
    isvc = client.get(INFERENCE_SERVICES, namespace, name)
    if isvc is None:
        return {}
    model = isvc.get("spec", {}).get("predictor", {}).get("model", {})
    args = [str(a) for a in model.get("args", [])]
    modules = args[args.index("--lora-modules") + 1] if "--lora-modules" in args[:-1] else None
    return {
        "name": name,
        "loraModules": modules,
        "args": args,
        "storageUris": [u.get("uri") for u in model.get("storageUris", [])],
    }


def collect(
    obj: dict[str, Any],
    job: LoRAJob,
    client: RestClient,
    store: S3Store,
    workdir: Path,
    pod_logs: Path,
) -> dict[str, Any]:
    """The machine-readable outcome; downloads the adapter and loss plot into the workdir."""
    status = obj.get("status") or {}
    run_id = str(status.get("currentRun") or "")
    run = recorded_run(status, run_id) or run_location(
        job.spec.output, job.metadata.namespace or "default", job.metadata.name, run_id
    )
    adapter_uri = status.get("adapterURI")
    adapter_files: list[str] = []
    adapter_dir = workdir / "adapter"
    if adapter_uri:
        adapter = S3Location.parse(str(adapter_uri))
        adapter_files = sorted(store.list(adapter, recursive=True))
        store.download_prefix(adapter, adapter_dir)
    plot = workdir / LOSS_PLOT
    if store.exists(run.child(LOSS_PLOT)):
        store.download_file(run.child(LOSS_PLOT), plot)
    losses = loss_records(store, run)
    progress = status.get("progress") or {}
    return {
        "name": job.metadata.name,
        "namespace": job.metadata.namespace or "default",
        "phase": status.get("phase"),
        "run": run_id,
        "runURI": run.uri,
        "adapterURI": adapter_uri,
        "finalAdapterURI": run.child(FINAL_DIR).uri,
        "adapterFiles": adapter_files,
        "adapterComplete": all(any(f.endswith(n) for f in adapter_files) for n in ADAPTER_FILES),
        "adapterDir": str(adapter_dir) if adapter_files else None,
        "lossPlot": str(plot) if plot.exists() else None,
        "losses": [[int(r["step"]), float(r["loss"])] for r in losses],
        "firstLoss": float(losses[0]["loss"]) if losses else None,
        "finalLoss": float(losses[-1]["loss"]) if losses else None,
        "evalLoss": progress.get("evalLoss"),
        "steps": int(progress.get("step") or 0),
        "totalSteps": int(progress.get("totalSteps") or 0),
        "configuredSteps": job.spec.training.max_steps,
        "restarts": int(status.get("restarts") or 0),
        "resumedFrom": resumed_steps(pod_logs),
        "inferenceService": inference_service(
            client, job.metadata.namespace or "default", status.get("inferenceService")
        ),
    }


def render(summary: dict[str, Any], plan_table: str, kubectl_get: str) -> str:
    """The human summary printed at the end of the demo."""
    first, final = summary.get("firstLoss"), summary.get("finalLoss")
    loss = "no loss recorded"
    if first is not None and final is not None:
        trend = "down" if final < first else "NOT down"
        loss = f"{first:.4f} at step {summary['losses'][0][0]} -> {final:.4f} at step "
        loss += f"{summary['losses'][-1][0]} ({trend})"
    isvc = summary.get("inferenceService") or {}
    serving = "no InferenceService"
    if isvc.get("loraModules"):
        serving = f"InferenceService {isvc['name']}: --lora-modules {isvc['loraModules']}"
    elif isvc:
        serving = f"InferenceService {isvc['name']} (shared: its adapters from its registry)"
    lines = [
        "",
        "=" * 78,
        f"LoRAJob {summary['namespace']}/{summary['name']}: {summary['phase']}",
        "=" * 78,
        plan_table,
        "",
        f"  steps:        {summary['steps']}/{summary['totalSteps']}",
        f"  loss:         {loss}",
    ]
    if summary.get("evalLoss") is not None:
        lines.append(f"  eval loss:    {float(summary['evalLoss']):.4f}")
    if summary.get("restarts"):
        resumed = ", ".join(f"checkpoint-{s}" for s in summary.get("resumedFrom") or []) or "?"
        lines.append(f"  pod failures: {summary['restarts']}; resumed from {resumed}")
    lines += [
        f"  adapter:      {summary.get('adapterURI')}",
        f"                ({', '.join(Path(f).name for f in summary['adapterFiles'])})",
        f"                downloaded to {summary.get('adapterDir')}",
        f"  loss curve:   {summary.get('lossPlot') or 'not written'}",
        f"  serving:      {serving}",
        "",
        "$ kubectl get lj -o wide",
        kubectl_get.rstrip(),
    ]
    return "\n".join(lines + pipeline_lines(summary.get("pipeline")))


def pipeline_lines(pipeline: dict[str, Any] | None) -> list[str]:
    """`--pipeline`'s outcome, read back from the API and the server (pipeline.py)."""
    if not pipeline:
        return []
    rollback = pipeline["rollback"]
    return [
        "",
        f"  shared server: {pipeline['server']} at {pipeline['serverURL']}",
        f"  /v1/models:    {', '.join(pipeline['models'])}",
        f"  second job:    {pipeline['secondJob']} ({pipeline['secondMethod']}, from "
        f"{(pipeline.get('secondStartedFrom') or {}).get('run', '?')})",
        f"  retrain:       {pipeline['retrain']['servingRun']} promoted, entry "
        f"{pipeline['retrain']['entryURI']}",
        f"  rollback:      servingRun {rollback['servingRun']}, entry {rollback['entryURI']}, "
        f"synced {rollback['syncedURI']}",
    ]
