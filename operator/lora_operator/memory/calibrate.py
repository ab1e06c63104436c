"""`lorajob calibrate FILE|-`: refit each GPU type's catalog `efficiency` from finished runs.

Reads LoRAJobs as `kubectl get lj -A -o json` (or -o yaml) prints them, takes every succeeded
run whose record carries a forecast and an actual wall time, and prints, per GPU type, the
efficiency that would have made the forecasts exact (wall time is inversely proportional to
it, so that is `efficiency / forecastRatio`), the median over runs, in the operator config's
`gpuCatalog` form, ready to paste. Runs shorter than `--min-minutes` are left out: pod start
and model download, which the forecast does not count, dominate them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lora_contract.types import Phase, RunRecord

from .catalog import GpuCatalog
from .errors import PlanningError

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Sample:
    job: str
    run: str
    gpu_type: str
    efficiency: float  # what would have made this run's forecast exact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorajob calibrate",
        description="Fit each GPU type's catalog efficiency to finished LoRAJob runs "
        "(kubectl get lj -A -o json | lorajob calibrate -).",
    )
    parser.add_argument("file", metavar="FILE", help="JSON or YAML dump of LoRAJobs; - for stdin")
    parser.add_argument(
        "--min-minutes",
        type=float,
        default=10.0,
        help="ignore runs shorter than this (start-up dominates them); default 10",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        documents = _items(yaml.safe_load(text))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"error: {args.file}: cannot read a LoRAJob list: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    samples, skipped = collect_samples(documents, args.min_minutes * 60)
    for note in skipped:
        print(f"# skipped {note}", file=sys.stderr)
    if not samples:
        print("error: no succeeded run with a forecast and an actual time", file=sys.stderr)
        return 1
    print(render(samples), end="")
    return 0


def _items(data: Any) -> list[Any]:
    """A `kind: List` (kubectl -o json/yaml), a bare list, or one object."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        return list(data["items"])
    if isinstance(data, list):
        return data
    return [data] if isinstance(data, dict) else []


def collect_samples(documents: list[Any], min_seconds: float) -> tuple[list[Sample], list[str]]:
    samples: list[Sample] = []
    skipped: list[str] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        name = str((doc.get("metadata") or {}).get("name", "?"))
        runs = (doc.get("status") or {}).get("runs") or []
        for raw in runs if isinstance(runs, list) else []:
            try:
                run = RunRecord.model_validate(raw)
            except ValidationError:
                skipped.append(f"{name}: a run record this version cannot read")
                continue
            sample = _sample(name, run, min_seconds, skipped)
            if sample is not None:
                samples.append(sample)
    return samples, skipped


def _sample(name: str, run: RunRecord, min_seconds: float, skipped: list[str]) -> Sample | None:
    forecast = run.forecast
    if run.phase != Phase.Succeeded or forecast is None:
        return None
    if forecast.actual_hours is None or not forecast.forecast_ratio:
        skipped.append(f"{name}/{run.id}: no actual time recorded")
        return None
    if forecast.actual_hours * 3600 < min_seconds:
        skipped.append(f"{name}/{run.id}: {forecast.actual_hours * 60:.1f} min is too short")
        return None
    return Sample(name, run.id, forecast.gpu_type, forecast.efficiency / forecast.forecast_ratio)


def render(samples: list[Sample]) -> str:
    """The operator config's gpuCatalog entries (fields set override the shipped ones; an entry
    needs memoryGib, taken from the shipped catalog for the types it knows)."""
    by_type: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_type[sample.gpu_type].append(sample)
    lines = ["# lorajob calibrate: median efficiency that would have made each forecast exact"]
    entries = []
    for gpu_type in sorted(by_type):
        values = [s.efficiency for s in by_type[gpu_type]]
        fitted = statistics.median(values)
        lines.append(
            f"# {gpu_type}: {len(values)} run(s), efficiencies "
            + ", ".join(f"{v:.3f}" for v in sorted(values))
        )
        entry: dict[str, Any] = {"name": gpu_type}
        try:
            entry["memoryGib"] = GpuCatalog.default().get(gpu_type).memory_gib
        except PlanningError:
            lines.append(f"# {gpu_type} is not a shipped type: copy its memoryGib from your config")
        entry["efficiency"] = round(min(fitted, 1.0), 3)
        entries.append(entry)
    body = yaml.safe_dump({"gpuCatalog": entries}, sort_keys=False)
    return "\n".join(lines) + "\n" + body


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
