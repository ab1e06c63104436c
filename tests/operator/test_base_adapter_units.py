"""controller/base_adapter.py: what spec.baseAdapter resolves to, every wait and refusal with its
exact message (hand-written here, not taken from the code), and the OWNER.json check."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lora_contract.layout import JobOwner
from lora_contract.types import BaseAdapterRecord, LoRAJobSpec
from lora_operator.controller.base_adapter import (
    BaseAdapterChoice,
    choose_base_adapter,
    owner_refusal,
)

NS = "team-a"
SFT_UID = "uid-sft-1"


def spec_dict(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"name": "meta-llama/Llama-3.2-1B", "source": "pvc://models/llama-1b"},
        "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj"]},
        "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
        "resources": {"gpuType": "cpu"},
        "output": {"bucket": "lora", "prefix": "runs"},
    }
    for path, value in over.items():
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return spec


def dpo(base: Any = None, **over: Any) -> LoRAJobSpec:
    raw = spec_dict(**over)
    raw["baseAdapter"] = base or {"job": "sft"}
    return LoRAJobSpec.model_validate(raw)


def run(id_: str, phase: str, adapter: bool = True, job: str = "sft") -> dict[str, Any]:
    folder = f"s3://lora/runs/{NS}/{job}/{id_}"
    record = {"id": id_, "specHash": "h", "outputURI": folder, "phase": phase}
    if adapter:
        record["adapterURI"] = f"{folder}/final"
    return record


def sft_job(*runs: dict[str, Any], serving: Any = None, **over: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"runs": list(runs)}
    if serving:
        status["servingRun"] = serving
    return {
        "metadata": {"name": "sft", "namespace": NS, "uid": SFT_UID},
        "spec": spec_dict(**over),
        "status": status,
    }


def choose(spec: LoRAJobSpec, base: dict[str, Any] | None, name: str = "dpo") -> BaseAdapterChoice:
    return choose_base_adapter(spec, name, NS, base)


def used(job: str, run_id: str) -> BaseAdapterChoice:
    folder = f"s3://lora/runs/{NS}/{job}/{run_id}"
    record = BaseAdapterRecord(job=job, run=run_id, uri=f"{folder}/final")
    return BaseAdapterChoice(record=record, base_uid=SFT_UID, output_uri=folder)


# ------------------------------------------------------------------------------ which run


def test_without_run_the_latest_succeeded_run_is_taken() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Failed"), run("r3", "Succeeded"))
    assert choose(dpo(), base) == used("sft", "r3")


def test_without_run_the_served_run_wins_over_the_latest() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Succeeded"), serving="r1")
    assert choose(dpo(), base) == used("sft", "r1")


def test_a_served_run_that_is_not_listed_falls_back_to_the_latest() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Succeeded"), serving="r9")
    assert choose(dpo(), base) == used("sft", "r2")


def test_a_succeeded_run_without_an_adapter_is_not_taken() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Succeeded", adapter=False))
    assert choose(dpo(), base) == used("sft", "r1")


def test_a_named_succeeded_run_is_taken_over_the_served_one() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Succeeded"), serving="r2")
    assert choose(dpo({"job": "sft", "run": "r1"}), base) == used("sft", "r1")


# ------------------------------------------------------------------------------ waits


def test_a_missing_job_waits_naming_the_field() -> None:
    assert choose(dpo(), None) == BaseAdapterChoice(
        wait="waiting for spec.baseAdapter.job sft: no LoRAJob team-a/sft"
    )


def test_a_job_without_a_succeeded_run_waits_listing_its_runs() -> None:
    base = sft_job(run("r1", "Failed", adapter=False), run("r2", "Running", adapter=False))
    assert choose(dpo(), base) == BaseAdapterChoice(
        wait="waiting for spec.baseAdapter.job sft to finish a run "
        "(its runs: r1 Failed, r2 Running)"
    )


def test_a_job_not_reconciled_yet_waits() -> None:
    base = sft_job()
    del base["status"]
    assert choose(dpo(), base) == BaseAdapterChoice(
        wait="waiting for spec.baseAdapter.job sft to finish a run (its runs: none)"
    )


@pytest.mark.parametrize("phase", ["Pending", "Queued", "Running"])
def test_a_named_run_still_active_waits(phase: str) -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", phase, adapter=False))
    assert choose(dpo({"job": "sft", "run": "r2"}), base) == BaseAdapterChoice(
        wait=f"waiting for run r2 of spec.baseAdapter.job sft ({phase})"
    )


# ------------------------------------------------------------------------------ refusals


def test_a_job_naming_itself_is_refused() -> None:
    assert choose(dpo({"job": "dpo"}), sft_job(), name="dpo") == BaseAdapterChoice(
        refusal="spec.baseAdapter.job dpo is this LoRAJob itself: a run starts from "
        "another job's adapter"
    )


def test_an_unknown_named_run_is_refused_listing_the_runs() -> None:
    base = sft_job(run("r1", "Succeeded"), run("r2", "Failed", adapter=False))
    assert choose(dpo({"job": "sft", "run": "r7"}), base) == BaseAdapterChoice(
        refusal="spec.baseAdapter.run r7 is not a run of LoRAJob sft, whose runs are: "
        "r1 Succeeded, r2 Failed (a run must have succeeded to start from)"
    )


@pytest.mark.parametrize("phase", ["Failed", "Suspended"])
def test_a_named_run_that_did_not_succeed_is_refused(phase: str) -> None:
    base = sft_job(run("r1", phase, adapter=False))
    assert choose(dpo({"job": "sft", "run": "r1"}), base) == BaseAdapterChoice(
        refusal=f"spec.baseAdapter.run r1 is {phase} in LoRAJob sft, whose runs are: "
        f"r1 {phase} (a run must have succeeded to start from)"
    )


def test_a_named_succeeded_run_without_adapter_is_refused() -> None:
    base = sft_job(run("r1", "Succeeded", adapter=False))
    assert choose(dpo({"job": "sft", "run": "r1"}), base).refusal == (
        "spec.baseAdapter.run r1 is Succeeded in LoRAJob sft, whose runs are: "
        "r1 Succeeded (a run must have succeeded to start from)"
    )


def test_another_base_model_is_refused_naming_both() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"baseModel.name": "Qwen/Qwen2.5-0.5B"})
    assert choose(dpo(), base) == BaseAdapterChoice(
        refusal="spec.baseAdapter.job sft trained its adapter on Qwen/Qwen2.5-0.5B, but "
        "spec.baseModel is meta-llama/Llama-3.2-1B: an adapter continues only on its own "
        "base model"
    )


def test_another_base_model_revision_is_refused() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"baseModel.revision": "v2"})
    assert choose(dpo(**{"baseModel.revision": "v1"}), base).refusal == (
        "spec.baseAdapter.job sft trained its adapter on meta-llama/Llama-3.2-1B@v2, but "
        "spec.baseModel is meta-llama/Llama-3.2-1B@v1: an adapter continues only on its own "
        "base model"
    )


def test_another_rank_is_refused_naming_lora_r() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"lora.r": 16})
    assert choose(dpo(), base) == BaseAdapterChoice(
        refusal="spec.lora.r 8 and targetModules ['q_proj', 'v_proj'] must be those of "
        "spec.baseAdapter.job sft (r 16, targetModules ['q_proj', 'v_proj']): the run "
        "continues that adapter, whose shape is fixed"
    )


def test_other_target_modules_are_refused_naming_lora_r() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"lora.targetModules": ["all-linear"]})
    assert choose(dpo(), base).refusal == (
        "spec.lora.r 8 and targetModules ['q_proj', 'v_proj'] must be those of "
        "spec.baseAdapter.job sft (r 8, targetModules ['all-linear']): the run "
        "continues that adapter, whose shape is fixed"
    )


def test_dora_against_lora_is_refused() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"lora.useDora": True})
    assert choose(dpo(), base).refusal == (
        "spec.lora.useDora false must be that of spec.baseAdapter.job sft (true): a DoRA "
        "adapter has magnitude weights a LoRA one lacks"
    )


def test_alpha_and_dropout_may_differ() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"lora.alpha": 64, "lora.dropout": 0.1})
    assert choose(dpo(), base) == used("sft", "r1")


def test_an_invalid_base_spec_is_refused() -> None:
    base = sft_job(run("r1", "Succeeded"))
    base["spec"]["lora"]["r"] = 0
    assert choose(dpo(), base) == BaseAdapterChoice(
        refusal="spec.baseAdapter.job sft: its spec is not valid, so its adapter's base "
        "model and shape are unknown"
    )


def test_an_adapter_outside_the_jobs_own_folder_is_refused() -> None:
    forged = run("r1", "Succeeded", job="other-team-job")  # a status pointing elsewhere
    assert choose(dpo(), sft_job(forged)) == BaseAdapterChoice(
        refusal="spec.baseAdapter.job sft: run r1's adapter "
        "s3://lora/runs/team-a/other-team-job/r1/final is not inside that job's own folder "
        "s3://lora/runs/team-a/sft/r1"
    )


def test_an_adapter_uri_beside_the_folder_is_refused() -> None:
    sneaky = run("r1", "Succeeded")
    sneaky["adapterURI"] = "s3://lora/runs/team-a/sft/r1-x/final"  # a prefix, not inside
    assert choose(dpo(), sft_job(sneaky)).refusal == (
        "spec.baseAdapter.job sft: run r1's adapter s3://lora/runs/team-a/sft/r1-x/final is not "
        "inside that job's own folder s3://lora/runs/team-a/sft/r1"
    )


def test_a_recorded_folder_other_than_the_jobs_is_refused() -> None:
    moved = run("r1", "Succeeded")
    moved["outputURI"] = "s3://lora/runs/team-b/sft/r1"
    moved["adapterURI"] = "s3://lora/runs/team-a/sft/r1/final"
    assert choose(dpo(), sft_job(moved)).refusal == (
        "spec.baseAdapter.job sft: run r1's adapter s3://lora/runs/team-a/sft/r1/final is not "
        "inside that job's own folder s3://lora/runs/team-a/sft/r1"
    )


def test_another_s3_endpoint_is_refused() -> None:
    base = sft_job(run("r1", "Succeeded"), **{"output.endpoint": "http://other:9000"})
    assert choose(dpo(), base).refusal == (
        "spec.baseAdapter.job sft writes to S3 endpoint http://other:9000, this job to "
        "(operator default): the trainer reads the base adapter with this job's spec.output "
        "endpoint and credentials"
    )


def test_unreadable_run_records_are_skipped() -> None:
    base = sft_job(run("r1", "Succeeded"), {"id": "r2", "phase": "Succeeded"})
    assert choose(dpo(), base) == used("sft", "r1")


# ------------------------------------------------------------------------------ OWNER.json


def test_the_named_jobs_own_marker_passes() -> None:
    owner = JobOwner(namespace=NS, name="sft", uid=SFT_UID)
    assert owner_refusal(used("sft", "r1"), NS, owner) is None


@pytest.mark.parametrize(
    ("owner", "found"),
    [
        (None, "no OWNER.json"),
        (
            JobOwner(namespace=NS, name="sft", uid="uid-old"),
            "the folder of LoRAJob team-a/sft (uid uid-old)",
        ),
        (
            JobOwner(namespace="team-b", name="sft", uid=SFT_UID),
            "the folder of LoRAJob team-b/sft (uid uid-sft-1)",
        ),
        (
            JobOwner(namespace=NS, name="other", uid=SFT_UID),
            "the folder of LoRAJob team-a/other (uid uid-sft-1)",
        ),
    ],
)
def test_another_owner_is_refused(owner: JobOwner | None, found: str) -> None:
    assert owner_refusal(used("sft", "r1"), NS, owner) == (
        f"spec.baseAdapter.job sft: s3://lora/runs/team-a/sft holds {found}, not LoRAJob "
        "team-a/sft (uid uid-sft-1): its adapter is not read"
    )


def test_a_base_job_without_uid_is_never_trusted() -> None:
    choice = used("sft", "r1")
    nameless = BaseAdapterChoice(record=choice.record, base_uid="", output_uri=choice.output_uri)
    owner = JobOwner(namespace=NS, name="sft", uid="")
    assert owner_refusal(nameless, NS, owner) == (
        "spec.baseAdapter.job sft: s3://lora/runs/team-a/sft holds the folder of LoRAJob "
        "team-a/sft (uid ), not LoRAJob team-a/sft (uid ): its adapter is not read"
    )


def test_the_choice_leaves_the_named_job_as_it_was() -> None:
    base = sft_job(run("r1", "Succeeded"))
    before = copy.deepcopy(base)
    choose(dpo(), base)
    assert base == before


def test_an_unreadable_record_first_does_not_hide_the_later_runs() -> None:
    base = sft_job({"id": "r0", "phase": "Succeeded"}, run("r1", "Succeeded"))
    assert choose(dpo(), base) == used("sft", "r1")


def test_the_operator_default_endpoint_is_named_as_such() -> None:
    base = sft_job(run("r1", "Succeeded"))
    assert choose(dpo(**{"output.endpoint": "http://mine:9000"}), base).refusal == (
        "spec.baseAdapter.job sft writes to S3 endpoint (operator default), this job to "
        "http://mine:9000: the trainer reads the base adapter with this job's spec.output "
        "endpoint and credentials"
    )


def test_a_named_job_read_without_uid_records_none() -> None:
    base = sft_job(run("r1", "Succeeded"))
    del base["metadata"]["uid"]
    choice = choose(dpo(), base)
    assert choice.base_uid == "" and choice.record is not None
    owner = JobOwner(namespace=NS, name="sft", uid="")
    assert owner_refusal(choice, NS, owner) is not None  # an empty uid is never trusted
