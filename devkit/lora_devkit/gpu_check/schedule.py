"""Running the cases inside a time budget: predict each case's cost (model build + run) from
what has been measured so far, start only what fits, and skip shapes an out-of-memory has
already ruled out. The clock, the builder and the runner are passed in (a fake clock in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cases import Case

# Priors until something is measured on this machine (seconds; H200-class GPU, local disk).
CASE_BASE_S = 20.0  # interpreter, torch/transformers/peft imports, CUDA context, 3 steps
CASE_S_PER_BILLION = {"lora": 2.5, "qlora": 4.0}  # loading (+ NF4 quantization while loading)
BUILD_BASE_S = 15.0
BUILD_S_PER_BILLION = 6.0  # random init on the GPU + safetensors write


@dataclass
class CostModel:
    """Seconds a case or a model build will take: the slowest measured run of the same model and
    method (a longer shape costs little next to loading), else a prior scaled by parameters."""

    billions: dict[str, float]  # model stem -> parameters / 1e9
    runs: dict[tuple[str, str], float] = field(default_factory=dict)
    build_rate: float | None = None  # measured seconds per billion parameters

    def case_s(self, case: Case) -> float:
        seen = self.runs.get((case.model, case.method))
        if seen is not None:
            return seen
        return CASE_BASE_S + CASE_S_PER_BILLION[case.method] * self.billions.get(case.model, 1.0)

    def build_s(self, model: str) -> float:
        size = self.billions.get(model, 1.0)
        if self.build_rate is not None:
            return self.build_rate * max(size, 0.1)
        return BUILD_BASE_S + BUILD_S_PER_BILLION * size

    def saw_run(self, case: Case, seconds: float) -> None:
        key = (case.model, case.method)
        self.runs[key] = max(seconds, self.runs.get(key, 0.0))

    def saw_build(self, model: str, seconds: float) -> None:
        self.build_rate = seconds / max(self.billions.get(model, 1.0), 0.1)


Runner = Callable[[Case, float], dict[str, Any]]  # (case, timeout s) -> result record
Builder = Callable[[str, float], str | None]  # (model stem, timeout s) -> error or None


def _skipped(case: Case, reason: str) -> dict[str, Any]:
    return {"case": case.to_dict(), "status": "skipped", "reason": reason}


def ruled_out_by(case: Case, failed: list[Case]) -> Case | None:
    """A smaller-or-equal shape of the same model and method that ran out of memory."""
    for other in failed:
        same = (other.model, other.method) == (case.model, case.method)
        if same and case.seq_len >= other.seq_len and case.micro_batch >= other.micro_batch:
            return other
    return None


def run_within_budget(
    cases: list[Case],
    costs: CostModel,
    build: Builder,
    run: Runner,
    budget_s: float,
    clock: Callable[[], float],
    after_case: Callable[[Case, list[Case]], None] = lambda case, pending: None,
) -> list[dict[str, Any]]:
    """One record per case, in order: measured, oom, error, or skipped with the reason.
    `after_case(case, pending)` lets the caller free a model no pending case needs."""
    started = clock()
    built: dict[str, str | None] = {}  # model -> build error (None: built)
    out_of_memory: list[Case] = []
    results: list[dict[str, Any]] = []
    for index, case in enumerate(cases):
        pending = cases[index + 1 :]
        left = budget_s - (clock() - started)
        smaller = ruled_out_by(case, out_of_memory)
        if smaller is not None:
            results.append(_skipped(case, f"{smaller.id} already ran out of memory"))
        elif built.get(case.model) is not None:
            results.append(_skipped(case, f"building {case.model} failed: {built[case.model]}"))
        else:
            need = costs.case_s(case) + (0.0 if case.model in built else costs.build_s(case.model))
            if need > left:
                results.append(
                    _skipped(case, f"time budget: needs ~{need:.0f} s, {max(left, 0):.0f} s left")
                )
            else:
                results.append(_measure(case, costs, build, run, built, left, clock))
                if results[-1]["status"] == "oom":
                    out_of_memory.append(case)
        after_case(case, pending)
    return results


def _measure(
    case: Case,
    costs: CostModel,
    build: Builder,
    run: Runner,
    built: dict[str, str | None],
    left: float,
    clock: Callable[[], float],
) -> dict[str, Any]:
    if case.model not in built:
        began = clock()
        built[case.model] = build(case.model, left)
        if built[case.model] is not None:
            return {"case": case.to_dict(), "status": "error", "reason": built[case.model]}
        costs.saw_build(case.model, clock() - began)
        left -= clock() - began
    began = clock()
    record = run(case, left)
    seconds = clock() - began
    if record.get("status") in ("measured", "oom"):
        costs.saw_run(case, seconds)
    record.setdefault("wall_s", round(seconds, 1))
    return record
