"""Each benchmark's goals with the figure it measured, collected for the closing table of
`make bench`: a goal is met, not met, or (when its benchmark did not finish) not measured."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    benchmark: str
    goal: str
    figure: str
    met: bool


RESULTS: list[Goal] = []


def record(benchmark: str, goal: str, figure: str, met: bool) -> Goal:
    """Note one goal's outcome (printed again in the closing table)."""
    result = Goal(benchmark, goal, figure, met)
    RESULTS.append(result)
    print(f"goal: {goal}: {figure}: {'met' if met else 'NOT met'}", flush=True)
    return result


def summary_table(goals: list[Goal], not_run: list[str]) -> str:
    """The closing table: one row a goal, then the benchmarks that produced no figure."""
    rows = [("benchmark", "goal", "figure", "result")]
    rows += [(g.benchmark, g.goal, g.figure, "met" if g.met else "NOT met") for g in goals]
    rows += [(name, "(all)", "no figure: the benchmark failed", "NOT measured") for name in not_run]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    met = sum(g.met for g in goals)
    lines.append(f"\n{met} of {len(goals) + len(not_run)} goals met")
    return "\n".join(line.rstrip() for line in lines)
