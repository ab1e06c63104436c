"""Which succeeded run's adapter serves (`serving.promote`): pure, the runs and the serving run
passed in, so a rollback is a spec change GitOps can review and revert like any other.

- latest: the newest succeeded run (a failed retrain keeps the last good adapter serving);
  jobs from before promotion, whose runs may have been pruned, keep status.adapterURI.
- best: the serving run stays unless another succeeded run's final eval loss is strictly lower;
  a run without an eval loss never wins, and a serving run without one gives way to any run
  that has one. With nothing serving yet, the lowest eval loss, else the newest.
- manual: exactly `serving.run`; an id that is not a succeeded run in status.runs changes
  nothing that serves and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_contract.types import Phase, PromotePolicy, Reason, RunRecord


@dataclass(frozen=True)
class Promotion:
    """`run_id`/`adapter_uri` to serve, or `refusal` (why nothing new serves)."""

    run_id: str | None
    adapter_uri: str | None
    refusal: str | None = None
    reason: Reason | None = None


def servable(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Succeeded runs with an adapter, oldest first (status.runs' order)."""
    return [r for r in runs if r.phase == Phase.Succeeded and r.adapter_uri]


def _serve(run: RunRecord) -> Promotion:
    return Promotion(run.id, run.adapter_uri)


def _best(candidates: list[RunRecord], serving: RunRecord | None) -> RunRecord | None:
    scored = [(r.final_eval_loss, r) for r in candidates if r.final_eval_loss is not None]
    if not scored:
        return serving or (candidates[-1] if candidates else None)
    best_loss, best = scored[0]
    for loss, run in scored[1:]:
        if loss <= best_loss:  # the newest of the lowest
            best_loss, best = loss, run
    if serving is None or serving.final_eval_loss is None:
        return best
    return best if best_loss < serving.final_eval_loss else serving


def choose_serving_run(
    runs: Sequence[RunRecord],
    policy: PromotePolicy,
    manual_run: str | None,
    serving_run: str | None,
    adapter_uri: str | None,
) -> Promotion:
    """`serving_run`: status.servingRun (what serves now); `adapter_uri`: status.adapterURI,
    the adapter `latest` served before runs were recorded with it."""
    candidates = servable(runs)
    if policy is PromotePolicy.manual:
        chosen = next((r for r in candidates if r.id == manual_run), None)
        if chosen is not None:
            return _serve(chosen)
        known = next((r for r in runs if r.id == manual_run), None)
        why = (
            f"run {manual_run} is {known.phase.value}, not Succeeded"
            if known is not None
            else f"run {manual_run} is not in status.runs"
        )
        ids = ", ".join(r.id for r in candidates) or "none"
        return Promotion(
            None,
            None,
            f"serving.run: {why} (succeeded runs: {ids}); what serves is left as it is",
            Reason.UnknownRun,
        )
    if policy is PromotePolicy.best:
        current = next((r for r in candidates if r.id == serving_run), None)
        best = _best(candidates, current)
        if best is not None:
            return _serve(best)
    elif candidates:
        return _serve(candidates[-1])
    return Promotion(None, adapter_uri)
