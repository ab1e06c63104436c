"""`lorajob plan FILE...`: the memory breakdown, placement and warnings of LoRAJob manifests."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from lora_contract.types import LoRAJob

from ..api.loading import SpecError, load_lorajobs
from .catalog import GpuCatalog
from .errors import PlanningError
from .estimate import TERM_HELP
from .placement import PlanResult, plan_job

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorajob plan",
        description="Estimate per-GPU peak memory of LoRAJobs and choose a placement.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="LoRAJob YAML file(s)")
    parser.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    parser.add_argument(
        "--gpu-type", metavar="NAME", help="plan for this GPU type instead of resources.gpuType"
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    results: list[tuple[LoRAJob, PlanResult]] = []
    try:
        for path in args.files:
            for job in load_lorajobs(path):
                if args.gpu_type:
                    job.spec.resources.gpu_type = args.gpu_type
                results.append((job, _plan(job, path)))
    except SpecError as exc:
        for problem in exc.problems:
            print(f"error: {exc.source}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output == "table":
        print("\n\n".join(render_table(job, result) for job, result in results))
    else:
        docs = [
            {"name": job.metadata.name, "plan": result.to_status().to_wire()}
            for job, result in results
        ]
        payload: Any = docs[0] if len(docs) == 1 else docs
        if args.output == "json":
            print(json.dumps(payload, indent=2))
        else:
            print(yaml.safe_dump(payload, sort_keys=False), end="")
    return 0


def _plan(job: LoRAJob, path: str) -> PlanResult:
    try:
        return plan_job(job.spec, GpuCatalog.default())
    except PlanningError as exc:
        raise SpecError(f"{path} ({job.metadata.name})", [str(exc)]) from None


def render_table(job: LoRAJob, result: PlanResult) -> str:
    status = result.to_status()
    unit = "process" if result.on_cpu else "GPU"
    lines = [
        f"LoRAJob {job.metadata.name}: {job.spec.base_model.name}",
        f"  parameters: {status.total_params:,} total, {status.trainable_params:,} trainable "
        f"({100 * status.trainable_params / max(status.total_params, 1):.3f}%)",
        "",
        f"  per-{unit} memory at peak (GiB)",
    ]
    for term, gib in status.breakdown_gib.items():
        if gib == 0:
            continue
        lines.append(f"    {term:<20}{gib:>9.2f}  {TERM_HELP.get(term, '')}")
    lines.append(f"    {'total':<20}{status.per_gpu_peak_gib:>9.2f}  of {status.gpu_memory_gib:g}")
    if result.estimate.host_offload_gib:
        lines.append(f"    offloaded to host: {result.estimate.host_offload_gib:.2f} GiB per rank")
    lines += [
        "",
        f"  placement: {status.nodes} node(s) x {status.gpus_per_node} {unit}(s) of "
        f"{status.gpu_type}, strategy {status.strategy.value}",
        f"  why: {status.reason}",
        f"  pod requests: {_amounts(status.requests.to_wire())}",
        f"  pod limits:   {_amounts(status.limits.to_wire())}",
    ]
    if status.warnings:
        lines += ["", "  warnings:"] + [f"    - {w}" for w in status.warnings]
    return "\n".join(lines)


def _amounts(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"
