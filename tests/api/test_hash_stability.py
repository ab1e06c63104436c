"""Spec hashes never move on upgrade: fields that evolve.

The hashes below were taken from every file in `examples/` on main before `dataset.revision`,
`dataset.watch` and `spec.schedule` existed (commit e5c822b). They are what existing jobs carry
in `status.specHash`; if one moved, every such job would retrain after the operator upgrade.
The rule that keeps them: a field added later is `RETRAINS_WHEN_SET` (out of the hash at its
declared default) or `KEEPS_RUN`; fields that always existed are still hashed at their defaults.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from lora_contract.types import KEEPS_RUN, RETRAINS, RETRAINS_WHEN_SET, LoRAJobSpec, Retrain
from lora_operator.api.hashing import (
    _training_part,
    retrain_classification,
    training_spec_hash,
    wire_spec_hash,
)
from lora_operator.api.loading import load_lorajobs

ROOT = Path(__file__).resolve().parents[2]

BEFORE_NEW_FIELDS = {
    "lora-llama3-70b-zero3.yaml": "32bd94fe6057",
    "lora-llama3-8b-a100.yaml": "2c9294b99ee1",
    "qlora-llama3-8b-24gb.yaml": "9d14f74e3f54",
    "tiny-cpu.yaml": "bb91a84c8b8f",
}
# Examples added with these fields: what their hash is with the fields set as they are there.
NEW_EXAMPLES = {"scheduled-retrain.yaml", "dpo-tiny-cpu.yaml", "sft-then-dpo-tiny-cpu.yaml"}


def _spec(example: str) -> LoRAJobSpec:
    (job,) = load_lorajobs(ROOT / "examples" / example)
    return job.spec


def test_every_example_is_pinned() -> None:
    found = {p.name for p in (ROOT / "examples").glob("*.yaml")}
    assert found == set(BEFORE_NEW_FIELDS) | NEW_EXAMPLES


@pytest.mark.parametrize(("example", "expected"), sorted(BEFORE_NEW_FIELDS.items()))
def test_hashes_from_before_the_new_fields_are_unchanged(example: str, expected: str) -> None:
    assert training_spec_hash(_spec(example)) == expected


@pytest.mark.parametrize("example", sorted(BEFORE_NEW_FIELDS))
def test_the_new_fields_unset_or_at_their_defaults_keep_the_hash(example: str) -> None:
    """A watch and a schedule (KEEPS_RUN), and revision written out as null: the same hash."""
    spec = _spec(example)
    wire = spec.model_dump(by_alias=True, mode="json")
    assert wire["dataset"]["revision"] is None  # present in the dump, at its default
    wire["dataset"]["watch"] = {"enabled": True, "minIntervalSeconds": 60}
    wire["schedule"] = {"cron": "0 3 * * 1", "timeZone": "Europe/Paris", "when": "Always"}
    assert wire_spec_hash(wire) == BEFORE_NEW_FIELDS[example]


@pytest.mark.parametrize("example", sorted(BEFORE_NEW_FIELDS))
def test_a_set_revision_moves_the_hash_like_any_retraining_field(example: str) -> None:
    spec = _spec(example)
    first = spec.model_copy(
        update={"dataset": spec.dataset.model_copy(update={"revision": "2026-12-01"})}
    )
    second = spec.model_copy(
        update={"dataset": spec.dataset.model_copy(update={"revision": "2026-12-08"})}
    )
    hashes = {BEFORE_NEW_FIELDS[example], training_spec_hash(first), training_spec_hash(second)}
    assert len(hashes) == 3


def test_the_hash_of_a_set_revision_by_hand() -> None:
    """tiny-cpu with revision "v2": sha256 over the sorted, compact JSON of the retraining fields
    with `revision` inside `dataset` (the other fields as the old hash took them)."""
    spec = _spec("tiny-cpu.yaml")
    wire = spec.model_dump(by_alias=True, mode="json")
    wire["dataset"]["revision"] = "v2"
    kept = dict(wire)
    for keeps_run in ("serving", "export", "suspend", "trainerImage", "ttlSecondsAfterFinished"):
        kept.pop(keeps_run)
    kept.pop("queueName")
    kept.pop("schedule")
    kept.pop("method")  # when-set fields at their defaults (sft, no dpo section)
    kept.pop("dpo")
    kept.pop("baseAdapter")  # when-set, unset
    kept["dataset"] = {k: v for k, v in wire["dataset"].items() if k != "watch"}
    for section, dropped in (
        ("training", ("chunkedLoss", "activationOffloading")),
        (
            "resources",
            (
                "gpuResourceName",
                "limits",
                "nodeSelector",
                "priorityClassName",
                "requests",
                "tolerations",
            ),
        ),
    ):
        kept[section] = {k: v for k, v in wire[section].items() if k not in dropped}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()
    assert wire_spec_hash(wire) == hashlib.sha256(blob).hexdigest()[:12]


def test_added_fields_are_when_set_or_keep_the_run() -> None:
    """The fields this release added: none is a plain RETRAINS (that would move every hash)."""
    dataset = LoRAJobSpec.model_fields["dataset"].annotation
    assert isinstance(dataset, type)
    markers: dict[str, Any] = {
        name: next(m for m in field.metadata if isinstance(m, Retrain))
        for name, field in dataset.model_fields.items()
        if name in ("revision", "watch")
    }
    assert markers == {"revision": Retrain.when_set, "watch": Retrain.no}
    classification = retrain_classification()
    assert classification["dataset.revision"] is True
    assert classification["dataset.watch"] is False
    assert classification["schedule"] is False


# ------------------------------------------------------------------ the rule on a made-up section


class Speed(Enum):  # a plain Enum: its wire form ("fast") is not equal to the member
    fast = "fast"
    slow = "slow"


class Limits(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    max_value: int = 4


class Evolving(BaseModel):
    """A section as it would look after a release added three fields to it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    old_knob: Annotated[int, RETRAINS] = 3
    new_speed: Annotated[Speed, RETRAINS_WHEN_SET] = Speed.fast
    new_limits: Annotated[Limits, RETRAINS_WHEN_SET] = Field(default_factory=Limits)
    new_tags: Annotated[list[str], RETRAINS_WHEN_SET] = Field(default_factory=lambda: ["a"])
    new_note: Annotated[str | None, RETRAINS_WHEN_SET] = None
    comment: Annotated[str, KEEPS_RUN] = ""


DEFAULTS = {
    "oldKnob": 3,
    "newSpeed": "fast",
    "newLimits": {"maxValue": 4},
    "newTags": ["a"],
    "newNote": None,
    "comment": "",
}


def test_fields_at_their_declared_defaults_are_left_out() -> None:
    assert Evolving().model_dump(by_alias=True, mode="json") == DEFAULTS  # the wire form
    assert _training_part(Evolving, dict(DEFAULTS)) == {"oldKnob": 3}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("newSpeed", "slow"),
        ("newLimits", {"maxValue": 5}),
        ("newTags", ["a", "b"]),
        ("newTags", []),
        ("newNote", "x"),
    ],
)
def test_a_field_set_away_from_its_default_is_hashed(key: str, value: Any) -> None:
    assert _training_part(Evolving, {**DEFAULTS, key: value}) == {"oldKnob": 3, key: value}


def test_an_old_field_is_hashed_at_its_default_and_missing_keys_are_skipped() -> None:
    """RETRAINS fields stay in the hash at their defaults (today's hashes); a key absent from
    the wire form is not made up."""
    assert _training_part(Evolving, {"oldKnob": 3}) == {"oldKnob": 3}
    assert _training_part(Evolving, {"newSpeed": "slow"}) == {"newSpeed": "slow"}
    assert _training_part(Evolving, {}) == {}
    assert _training_part(Evolving, {**DEFAULTS, "comment": "changed"}) == {"oldKnob": 3}


def test_method_and_dpo_enter_the_hash_only_when_set() -> None:
    """spec.method (sft) and spec.dpo (unset), added with DPO: at their defaults the hash of
    tiny-cpu is the pinned one; set, they retrain."""
    wire = _spec("tiny-cpu.yaml").model_dump(by_alias=True, mode="json")
    assert (wire["method"], wire["dpo"]) == ("sft", None)
    assert wire_spec_hash(wire) == BEFORE_NEW_FIELDS["tiny-cpu.yaml"]
    as_dpo = {**wire, "method": "dpo"}
    with_beta = {**as_dpo, "dpo": {"beta": 0.2, "lossType": "sigmoid"}}
    hashes = {wire_spec_hash(w) for w in (wire, as_dpo, with_beta)}
    assert len(hashes) == 3
    markers = {
        name: next(m for m in LoRAJobSpec.model_fields[name].metadata if isinstance(m, Retrain))
        for name in ("method", "dpo")
    }
    assert markers == {"method": Retrain.when_set, "dpo": Retrain.when_set}
