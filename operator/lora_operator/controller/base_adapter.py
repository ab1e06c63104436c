"""`spec.baseAdapter`: which earlier adapter a run starts from (SFT, then DPO from the SFT
adapter), decided when the run is about to start, from the named LoRAJob as read in this job's
namespace. Pure: `reconcile._Run` reads the LoRAJob and the folder's OWNER.json around it.

A run waits (Pending, re-checked at every resync) while what it needs may still come: the named
job does not exist yet, or has no succeeded run yet. It is refused (nothing created) when it never
can work as written: a job naming itself, a named run that is not there or did not succeed, a
different base model, a different adapter shape, or an adapter outside the named job's own folder
(only that folder, claimed by that job's uid, may be read: never another namespace's or uid's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lora_contract.layout import JobOwner, S3Location, run_location
from lora_contract.types import BaseAdapterRecord, LoRAJobSpec, Phase, RunRecord

WAITING_PHASES = (Phase.Pending.value, Phase.Queued.value, Phase.Running.value)


@dataclass(frozen=True)
class BaseAdapterChoice:
    """Exactly one of: `record` (use it; `base_uid` must own `record`'s folder), `wait` (the
    run stays Pending, said in this message) or `refusal` (the run fails to start)."""

    record: BaseAdapterRecord | None = None
    base_uid: str = ""
    output_uri: str = ""  # the base run's folder: its job folder holds the OWNER.json
    wait: str | None = None
    refusal: str | None = None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _runs(status: dict[str, Any]) -> list[RunRecord]:
    runs = []
    for raw in status.get("runs") or []:
        try:
            runs.append(RunRecord.model_validate(raw))
        except ValidationError:
            continue  # a record this operator cannot read is not a run to start from
    return runs


def _model(spec: LoRAJobSpec) -> str:
    revision = spec.base_model.revision
    return spec.base_model.name + (f"@{revision}" if revision else "")


def _listed(runs: list[RunRecord]) -> str:
    return ", ".join(f"{r.id} {r.phase.value}" for r in runs) or "none"


def shape_refusal(job: str, ours: LoRAJobSpec, theirs: LoRAJobSpec) -> str | None:
    """The base model and the adapter's shape must be the named job's: the run continues its
    adapter (its A and B matrices) on the model they were trained for."""
    if _model(ours) != _model(theirs):
        return (
            f"spec.baseAdapter.job {job} trained its adapter on {_model(theirs)}, but "
            f"spec.baseModel is {_model(ours)}: an adapter continues only on its own base model"
        )
    if (ours.lora.r, ours.lora.target_modules) != (theirs.lora.r, theirs.lora.target_modules):
        return (
            f"spec.lora.r {ours.lora.r} and targetModules {ours.lora.target_modules} must be "
            f"those of spec.baseAdapter.job {job} (r {theirs.lora.r}, targetModules "
            f"{theirs.lora.target_modules}): the run continues that adapter, whose shape is fixed"
        )
    if ours.lora.use_dora != theirs.lora.use_dora:
        return (
            f"spec.lora.useDora {str(ours.lora.use_dora).lower()} must be that of "
            f"spec.baseAdapter.job {job} ({str(theirs.lora.use_dora).lower()}): a DoRA adapter "
            "has magnitude weights a LoRA one lacks"
        )
    return None


def _pick_run(
    job: str, wanted: str | None, runs: list[RunRecord], serving_run: Any
) -> RunRecord | str | BaseAdapterChoice:
    """The run to start from, or a wait (a str) or a refusal (a choice)."""
    succeeded = [r for r in runs if r.phase is Phase.Succeeded and r.adapter_uri]
    if wanted is not None:
        named = next((r for r in runs if r.id == wanted), None)
        if named is not None and named.phase.value in WAITING_PHASES:
            return f"waiting for run {wanted} of spec.baseAdapter.job {job} ({named.phase.value})"
        if named is None or named.phase is not Phase.Succeeded or not named.adapter_uri:
            found = "is not a run of" if named is None else f"is {named.phase.value} in"
            return BaseAdapterChoice(
                refusal=f"spec.baseAdapter.run {wanted} {found} LoRAJob {job}, whose runs are: "
                f"{_listed(runs)} (a run must have succeeded to start from)"
            )
        return named
    served = next((r for r in succeeded if r.id == serving_run), None)
    if served is not None:
        return served
    if succeeded:
        return succeeded[-1]
    return f"waiting for spec.baseAdapter.job {job} to finish a run (its runs: {_listed(runs)})"


def choose_base_adapter(
    spec: LoRAJobSpec, name: str, namespace: str, base: dict[str, Any] | None
) -> BaseAdapterChoice:
    """What `spec.baseAdapter` resolves to for this LoRAJob (`name` in `namespace`), given the
    named LoRAJob as read from the API (None: it does not exist)."""
    ref = spec.base_adapter
    assert ref is not None, "only called for a spec with baseAdapter"
    job = ref.job
    if job == name:
        return BaseAdapterChoice(
            refusal=f"spec.baseAdapter.job {job} is this LoRAJob itself: a run starts from "
            "another job's adapter"
        )
    if base is None:
        return BaseAdapterChoice(
            wait=f"waiting for spec.baseAdapter.job {job}: no LoRAJob {namespace}/{job}"
        )
    try:
        theirs = LoRAJobSpec.model_validate(base.get("spec"))
    except ValidationError:
        return BaseAdapterChoice(
            refusal=f"spec.baseAdapter.job {job}: its spec is not valid, so its adapter's "
            "base model and shape are unknown"
        )
    refusal = shape_refusal(job, spec, theirs)
    if refusal is not None:
        return BaseAdapterChoice(refusal=refusal)
    status = _mapping(base.get("status"))
    picked = _pick_run(job, ref.run, _runs(status), status.get("servingRun"))
    if isinstance(picked, BaseAdapterChoice):
        return picked
    if isinstance(picked, str):
        return BaseAdapterChoice(wait=picked)
    own = run_location(theirs.output, namespace, job, picked.id)
    adapter = picked.adapter_uri or ""
    if picked.output_uri != own.uri or not adapter.startswith(own.uri + "/"):
        return BaseAdapterChoice(
            refusal=f"spec.baseAdapter.job {job}: run {picked.id}'s adapter {adapter} is not "
            f"inside that job's own folder {own.uri}"
        )
    if theirs.output.endpoint != spec.output.endpoint:
        return BaseAdapterChoice(
            refusal=f"spec.baseAdapter.job {job} writes to S3 endpoint "
            f"{theirs.output.endpoint or '(operator default)'}, this job to "
            f"{spec.output.endpoint or '(operator default)'}: the trainer reads the base "
            "adapter with this job's spec.output endpoint and credentials"
        )
    uid = str(_mapping(base.get("metadata")).get("uid") or "")
    record = BaseAdapterRecord(job=job, run=picked.id, uri=adapter)
    return BaseAdapterChoice(record=record, base_uid=uid, output_uri=picked.output_uri)


def owner_refusal(choice: BaseAdapterChoice, namespace: str, owner: JobOwner | None) -> str | None:
    """The chosen folder must be claimed (OWNER.json) by the named LoRAJob itself: same
    namespace, name and uid. Another uid there is a deleted same-name job's, never ours to read."""
    record = choice.record
    assert record is not None, "only for a chosen adapter"
    expected = JobOwner(namespace=namespace, name=record.job, uid=choice.base_uid)
    if owner == expected and choice.base_uid:
        return None
    folder = S3Location.parse(choice.output_uri).parent.uri
    found = "no OWNER.json" if owner is None else f"the folder of {owner.describe()}"
    return (
        f"spec.baseAdapter.job {record.job}: {folder} holds {found}, not "
        f"{expected.describe()}: its adapter is not read"
    )
