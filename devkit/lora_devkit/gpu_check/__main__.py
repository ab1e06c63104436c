"""`python -m lora_devkit.gpu_check`: run the calibration cases on this machine's GPU (or a
`--device cpu` dry run of the same code path), print measured peaks beside the plan's, and
write the JSON results (and, asked to, the docs section and the memory benchmark's rows)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cases import Case, default_cases, quick_cases
from .planned import billions, catalog_gpu, error, planned
from .report import text_table, write_cases, write_docs
from .schedule import CostModel, run_within_budget

REPO = Path(__file__).resolve().parents[3]
DOCS_PATH = REPO / "docs" / "benchmarks.md"
CASES_PATH = REPO / "devkit" / "lora_devkit" / "bench" / "memory_cases.yaml"
CONFIGS = REPO / "operator" / "lora_operator" / "memory" / "configs"
PROBE_TIMEOUT_S = 180.0
WRITE_RESERVE_S = 10.0  # kept back from the budget for planning and writing the results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lora_devkit.gpu_check",
        description="Measure the trainer's peak GPU memory on random-init models and compare "
        "it with the plan (docs/benchmarks.md, 'GPU calibration').",
    )
    parser.add_argument("--cases", choices=["default", "quick"], default="default")
    parser.add_argument("--models", help="only these config stems, comma-separated")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--time-budget", type=float, default=480.0, help="seconds (default 480)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".bench/gpu-check.json"),
        help="children's logs: <out>-logs/",
    )
    parser.add_argument("--work-dir", type=Path, help="the models built (default: a temp dir)")
    parser.add_argument("--write-docs", action="store_true", help="results into --docs-path")
    parser.add_argument("--docs-path", type=Path, default=DOCS_PATH)
    parser.add_argument("--write-cases", action="store_true", help="rows into --cases-path")
    parser.add_argument("--cases-path", type=Path, default=CASES_PATH)
    return parser


class Children:
    """Starts the child processes, each writing its log and its result file into `logs`."""

    def __init__(self, work: Path, logs: Path, device: str) -> None:
        self.work = work
        self.logs = logs
        self.device = device
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        if device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        logs.mkdir(parents=True, exist_ok=True)

    def call(self, name: str, args: list[str], timeout: float) -> dict[str, Any]:
        result = self.logs / f"{name}.json"
        log = self.logs / f"{name}.log"
        result.unlink(missing_ok=True)
        command = [sys.executable, "-m", "lora_devkit.gpu_check.child", *args]
        command += ["--result", str(result), "--device", self.device]
        with log.open("w") as out:
            # Same process group as this one: whatever stops the run stops the case too.
            proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"status": "timeout", "reason": f"stopped after {timeout:.0f} s ({log})"}
        if result.exists():
            found: dict[str, Any] = json.loads(result.read_text())
            if found.get("status") == "error":
                found["reason"] = f"{found.get('reason')} ({log})"
            return found
        tail = log.read_text()[-300:].strip().replace("\n", " | ")
        return {"status": "error", "reason": f"exit {proc.returncode}: {tail} ({log})"}

    def model_dir(self, model: str) -> Path:
        return self.work / "models" / model

    def build(self, model: str, timeout: float) -> str | None:
        config = CONFIGS / f"{model}.json"
        args = ["build", "--config", str(config), "--model-dir", str(self.model_dir(model))]
        found = self.call(f"build-{model}", args, timeout)
        return None if found.get("status") == "built" else str(found.get("reason"))

    def run(self, case: Case, timeout: float) -> dict[str, Any]:
        scratch = self.work / "scratch" / case.id
        args = ["case", "--case", json.dumps(case.to_dict()), "--model-dir"]
        args += [str(self.model_dir(case.model)), "--scratch", str(scratch)]
        found = self.call(case.id, args, timeout)
        shutil.rmtree(scratch, ignore_errors=True)
        return {"case": case.to_dict(), **found}


def select(args: argparse.Namespace) -> list[Case]:
    cases = default_cases() if args.cases == "default" else quick_cases(args.device)
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        unknown = wanted - {c.model for c in cases}
        if unknown:
            known = sorted({c.model for c in cases})
            raise SystemExit(f"--models: {sorted(unknown)} not in the {args.cases} cases {known}")
        cases = [c for c in cases if c.model in wanted]
    return cases


def beside_plan(record: dict[str, Any], case: Case, gpu_type: str) -> dict[str, Any]:
    """The record with the plan's estimate and its errors (only for a case that ran: an
    out-of-memory's peak is what was reached, not what the case needs)."""
    plan = planned(case, gpu_type)
    ran = record["status"] == "measured"
    return {
        **record,
        "plan": plan,
        "allocated_error": error(plan.get("peak_allocated_gib"), record.get("peak_allocated_gib"))
        if ran
        else None,
        "reserved_error": error(plan.get("peak_reserved_gib"), record.get("peak_reserved_gib"))
        if ran
        else None,
    }


def main(argv: list[str] | None = None, clock: Any = time.monotonic) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.time_budget <= 0:
        parser.error("--time-budget must be a positive number of seconds")
    started = clock()
    cases = select(args)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        # Logs beside the results (they outlive a temporary work dir): <out>-logs/
        logs = args.out.parent / f"{args.out.stem}-logs"
        shutil.rmtree(logs, ignore_errors=True)
        return calibrate(args, cases, Children(work, logs, args.device), clock, started)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def calibrate(
    args: argparse.Namespace, cases: list[Case], children: Children, clock: Any, started: float
) -> int:
    """Probe, run what the budget allows, plan every case, report; the exit code."""
    began_at = datetime.now(timezone.utc)
    device = children.call("probe", ["probe"], PROBE_TIMEOUT_S)
    if "versions" not in device:
        print(f"gpu-check: cannot import torch here: {device.get('reason')}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not device.get("cuda"):
        print(
            f"gpu-check: torch {device['versions'].get('torch')} sees no CUDA GPU. Install a "
            "CUDA build of torch (see the Makefile's gpu-check notes), or run the dry run: "
            "--device cpu --cases quick",
            file=sys.stderr,
        )
        return 2
    gpu_type = catalog_gpu(args.device == "cuda", device.get("total_gib"))
    no_kbit = args.device == "cuda" and not device.get("bitsandbytes_imports")
    runnable = [c for c in cases if not (no_kbit and c.method == "qlora")]
    costs = CostModel({c.model: billions(c.model_id) for c in cases})

    def free_model(case: Case, pending: list[Case]) -> None:
        if not any(p.model == case.model for p in pending):
            shutil.rmtree(children.model_dir(case.model), ignore_errors=True)

    budget = args.time_budget - (clock() - started) - WRITE_RESERVE_S
    print(
        f"gpu-check: {len(runnable)} cases, {budget:.0f} s budget, in {children.work}", flush=True
    )
    measured = run_within_budget(
        runnable, costs, children.build, children.run, budget, clock, free_model
    )
    by_id = {r["case"]["id"]: r for r in measured}
    results = []
    for case in cases:
        skipped = {
            "case": case.to_dict(),
            "status": "skipped",
            "reason": f"bitsandbytes does not import: {device.get('bitsandbytes_error')}",
        }
        results.append(beside_plan(by_id.get(case.id, skipped), case, gpu_type))
    document = {
        "started": began_at.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "gpu_type": gpu_type,
        "budget_s": args.time_budget,
        "wall_s": round(clock() - started, 1),
        "measured": sum(r["status"] == "measured" for r in results),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(text_table(document))
    print(f"\nresults: {args.out}")
    if args.write_docs:
        try:
            write_docs(args.docs_path, document)
        except (OSError, ValueError) as exc:
            print(f"gpu-check: --write-docs: {exc}", file=sys.stderr)
            return 1
        print(f"docs: {args.docs_path} (GPU calibration section)")
    if args.write_cases:
        print(
            f"memory benchmark: {write_cases(args.cases_path, document)} rows in {args.cases_path}"
        )
    # A case stopped at the budget or out of memory is a result; only a broken case fails.
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
