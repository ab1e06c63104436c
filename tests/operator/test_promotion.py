"""promotion.choose_serving_run: which run serves under latest, best and manual, with the runs
written out by hand (ids, phases, eval losses) and the expected run named in each test."""

from __future__ import annotations

import pytest

from lora_contract.types import Phase, PromotePolicy, Reason, RunRecord
from lora_operator.controller.promotion import Promotion, choose_serving_run, servable

LATEST, BEST, MANUAL = PromotePolicy.latest, PromotePolicy.best, PromotePolicy.manual


def run(id_: str, phase: Phase = Phase.Succeeded, eval_loss: float | None = None) -> RunRecord:
    done = phase == Phase.Succeeded
    return RunRecord(
        id=id_,
        spec_hash="h",
        output_uri=f"s3://b/runs/ns/job/{id_}",
        phase=phase,
        adapter_uri=f"s3://b/runs/ns/job/{id_}/final" if done else None,
        final_eval_loss=eval_loss,
    )


def serves(id_: str) -> Promotion:
    return Promotion(id_, f"s3://b/runs/ns/job/{id_}/final")


def test_servable_keeps_succeeded_runs_with_an_adapter_in_order() -> None:
    runs = [run("r1"), run("r2", Phase.Failed), run("r3"), run("r4", Phase.Running)]
    assert [r.id for r in servable(runs)] == ["r1", "r3"]


# ------------------------------------------------------------------------------------ latest


def test_latest_serves_the_newest_succeeded_run() -> None:
    runs = [run("r1", eval_loss=0.5), run("r2", eval_loss=0.9)]
    assert choose_serving_run(runs, LATEST, None, "r1", None) == serves("r2")


def test_latest_keeps_the_last_good_run_after_a_failed_retrain() -> None:
    runs = [run("r1"), run("r2"), run("r3", Phase.Failed)]
    assert choose_serving_run(runs, LATEST, None, "r2", None) == serves("r2")


def test_latest_without_recorded_runs_keeps_status_adapter_uri() -> None:
    assert choose_serving_run([], LATEST, None, None, "s3://b/old/final") == Promotion(
        None, "s3://b/old/final"
    )


# -------------------------------------------------------------------------------------- best


def test_best_promotes_a_new_run_with_a_lower_eval_loss() -> None:
    runs = [run("r1", eval_loss=0.80), run("r2", eval_loss=0.75)]
    assert choose_serving_run(runs, BEST, None, "r1", None) == serves("r2")


def test_best_keeps_the_serving_run_when_the_new_one_is_worse_or_equal() -> None:
    worse = [run("r1", eval_loss=0.80), run("r2", eval_loss=0.81)]
    assert choose_serving_run(worse, BEST, None, "r1", None) == serves("r1")
    equal = [run("r1", eval_loss=0.80), run("r2", eval_loss=0.80)]
    assert choose_serving_run(equal, BEST, None, "r1", None) == serves("r1")


def test_best_ignores_a_run_without_an_eval_loss() -> None:
    runs = [run("r1", eval_loss=0.80), run("r2")]
    assert choose_serving_run(runs, BEST, None, "r1", None) == serves("r1")


def test_best_replaces_a_serving_run_without_an_eval_loss() -> None:
    runs = [run("r1"), run("r2", eval_loss=2.0)]
    assert choose_serving_run(runs, BEST, None, "r1", None) == serves("r2")


def test_best_with_nothing_serving_takes_the_lowest_newest_on_a_tie() -> None:
    runs = [run("r1", eval_loss=0.7), run("r2", eval_loss=0.6), run("r3", eval_loss=0.6)]
    assert choose_serving_run(runs, BEST, None, None, None) == serves("r3")
    assert choose_serving_run(runs[:2], BEST, None, None, None) == serves("r2")


def test_best_without_any_eval_loss_keeps_serving_else_takes_the_newest() -> None:
    runs = [run("r1"), run("r2")]
    assert choose_serving_run(runs, BEST, None, "r1", None) == serves("r1")
    assert choose_serving_run(runs, BEST, None, None, None) == serves("r2")


def test_best_with_a_failed_serving_run_id_compares_the_rest() -> None:
    # status.servingRun names a run no longer servable (pruned): the best of the others.
    runs = [run("r2", eval_loss=0.9), run("r3", eval_loss=0.4)]
    assert choose_serving_run(runs, BEST, None, "r1", None) == serves("r3")


def test_best_with_no_succeeded_run_keeps_status_adapter_uri() -> None:
    assert choose_serving_run([run("r1", Phase.Failed)], BEST, None, None, "s3://b/x") == Promotion(
        None, "s3://b/x"
    )


# ------------------------------------------------------------------------------------ manual


def test_manual_serves_the_named_run_even_an_older_worse_one() -> None:
    runs = [run("r1", eval_loss=0.9), run("r2", eval_loss=0.1)]
    assert choose_serving_run(runs, MANUAL, "r1", "r2", None) == serves("r1")


def test_manual_refuses_an_unknown_run_naming_serving_run() -> None:
    runs = [run("r1"), run("r2")]
    assert choose_serving_run(runs, MANUAL, "r9", "r2", None) == Promotion(
        None,
        None,
        "serving.run: run r9 is not in status.runs (succeeded runs: r1, r2); what serves is "
        "left as it is",
        Reason.UnknownRun,
    )


def test_manual_refuses_a_failed_run_naming_its_phase() -> None:
    runs = [run("r1", Phase.Failed)]
    promotion = choose_serving_run(runs, MANUAL, "r1", None, None)
    assert promotion.run_id is None and promotion.adapter_uri is None
    assert promotion.reason is Reason.UnknownRun
    assert promotion.refusal == (
        "serving.run: run r1 is Failed, not Succeeded (succeeded runs: none); what serves is "
        "left as it is"
    )


def test_latest_and_best_take_the_last_of_three_not_the_second() -> None:
    runs = [run("r1"), run("r2"), run("r3")]
    assert choose_serving_run(runs, LATEST, None, None, None) == serves("r3")
    assert choose_serving_run(runs, BEST, None, None, None) == serves("r3")


def test_a_succeeded_run_without_adapter_or_a_failed_one_with_one_is_not_servable() -> None:
    no_adapter = run("r1")
    no_adapter.adapter_uri = None
    failed = run("r2", Phase.Failed)
    failed.adapter_uri = "s3://b/runs/ns/job/r2/final"
    assert servable([no_adapter, failed]) == []


def test_serving_run_is_set_exactly_with_manual() -> None:
    """The pydantic validator (the CRD's CEL rule says the same) names spec.serving."""
    from operator_harness import base_job

    from lora_operator.api.crd import build_crd
    from lora_operator.api.loading import SpecError, parse_lorajob

    message = "spec.serving: serving.run is set exactly when serving.promote is manual"
    for overrides in ({"serving.promote": "manual"}, {"serving.run": "r1"}):
        with pytest.raises(SpecError, match=message):
            parse_lorajob(base_job("v", **overrides))
    ok = parse_lorajob(base_job("v", **{"serving.promote": "manual", "serving.run": "r1"}))
    assert (ok.spec.serving.promote, ok.spec.serving.run) == (MANUAL, "r1")
    version = build_crd()["spec"]["versions"][0]
    serving = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serving"]
    assert {
        "rule": "(has(self.promote) && self.promote == 'manual') == has(self.run)",
        "message": "serving.run is set exactly when serving.promote is manual",
        "fieldPath": ".run",
    } in serving["x-kubernetes-validations"]
    column = {"name": "Serving-Run", "type": "string", "jsonPath": ".status.servingRun"}
    assert {**column, "priority": 1} in version["additionalPrinterColumns"]
