"""The IO around promotion.py and serving_compat.py: which run's adapter the InferenceService
points at, and whether vLLM can load it, read from the adapter_config.json the trainer wrote;
and a run's lineage, read from its final MANIFEST.json. Both files are read through the job's
own credentials, only from a folder this LoRAJob owns (its OWNER.json), like progress.json.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lora_contract.layout import MANIFEST, S3Location
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import LoRAJobSpec, LoRAJobStatus, Reason, RunLineage, RunRecord

from .promotion import Promotion, choose_serving_run
from .serving import ServingState, vllm_lora_rank
from .serving_compat import adapter_problem, shipped_model_type, spec_problem

log = logging.getLogger("lora_operator.serving")
ADAPTER_CONFIG = "adapter_config.json"


def _read_owned(store: S3Store, run: RunRecord, name: str, uid: str) -> dict[str, Any] | None:
    if not run.adapter_uri:
        return None
    try:
        owner = store.job_owner(S3Location.parse(run.output_uri))
        if owner is not None and owner.uid != uid:
            log.warning("not reading %s of run %s: folder of %s", name, run.id, owner.describe())
            return None
        raw = store.get_json(S3Location.parse(run.adapter_uri).child(name))
    except (StorageError, ValueError) as exc:
        log.warning("cannot read %s of run %s: %s", name, run.id, exc)
        return None
    return raw if isinstance(raw, dict) else None


async def read_final(
    store: S3Store | None, run: RunRecord, name: str, uid: str
) -> dict[str, Any] | None:
    """A JSON file of the run's final adapter folder; None when missing or unreadable."""
    if store is None:
        return None
    return await asyncio.to_thread(_read_owned, store, run, name, uid)


def lineage_from_manifest(manifest: dict[str, Any] | None) -> RunLineage | None:
    raw = (manifest or {}).get("lineage")
    if not isinstance(raw, dict):
        return None
    try:
        return RunLineage.model_validate(raw)
    except ValidationError as exc:
        log.warning("ignoring malformed lineage: %s", exc.errors(include_url=False)[:1])
        return None


async def run_lineage(store: S3Store | None, run: RunRecord, uid: str) -> RunLineage | None:
    return lineage_from_manifest(await read_final(store, run, MANIFEST, uid))


@dataclass(frozen=True)
class ServingChoice:
    """`promotion` to serve, or `refusal`: the Serving condition instead (nothing changes)."""

    promotion: Promotion
    refusal: ServingState | None = None


async def choose_served(
    spec: LoRAJobSpec,
    status: LoRAJobStatus,
    open_store: Callable[[], Awaitable[S3Store | None]],
    uid: str,
) -> ServingChoice:
    """`open_store`: the job's S3 store, opened (a Secret read) only when a newly promoted
    run's adapter_config.json must be read: a serving job's resync reads nothing."""
    serving = spec.serving
    promotion = choose_serving_run(
        status.runs, serving.promote, serving.run, status.serving_run, status.adapter_uri
    )
    if promotion.refusal is not None:
        reason = promotion.reason or Reason.UnknownRun
        return ServingChoice(promotion, ServingState("False", reason, promotion.refusal))
    if promotion.run_id is not None and promotion.run_id == status.serving_run:
        return ServingChoice(promotion)  # checked when it was promoted: no read per resync
    run = next((r for r in status.runs if r.id == promotion.run_id), None)
    model_type = shipped_model_type(spec.base_model.name)
    max_rank = vllm_lora_rank(spec.lora.r)
    config = None
    if run is not None:
        config = await read_final(await open_store(), run, ADAPTER_CONFIG, uid)
    problem = (
        adapter_problem(config, spec, model_type, max_rank)
        if config is not None
        else spec_problem(spec, model_type, max_rank)  # no adapter_config.json to read
    )
    if problem is None:
        return ServingChoice(promotion)
    where = f"run {promotion.run_id}" if promotion.run_id else "the adapter"
    message = f"{where} cannot be served by vLLM: {problem}"
    return ServingChoice(promotion, ServingState("False", Reason.IncompatibleAdapter, message))


def unservable_spec(spec: LoRAJobSpec) -> str | None:
    """With serving on, what in the spec alone would keep vLLM from serving the adapter this
    run trains: said when the run starts, hours before the adapter exists."""
    if not spec.serving.enabled:
        return None
    model_type = shipped_model_type(spec.base_model.name)
    problem = spec_problem(spec, model_type, vllm_lora_rank(spec.lora.r))
    return f"vLLM will not serve this run's adapter: {problem}" if problem else None
