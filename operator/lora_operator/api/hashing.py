"""A stable hash of the parts of a spec that change what gets trained.

Kubernetes bumps `metadata.generation` on any spec change (serving, suspend, labels...), so the
operator decides "retrain?" from this hash. Which fields count is declared on the fields
themselves (`Retrain` metadata in `types.py`), not listed here: a new field without a
classification fails `retrain_classification()` and its test.

Fields that evolve: the hash is taken over the spec with defaults filled in, so a new field in a
hashed section would enter every existing job's hash at its default and retrain them all on
upgrade. A field added after jobs exist is therefore `RETRAINS_WHEN_SET` (left out of the hash
while it equals its declared default, hashed like any other once set) or `KEEPS_RUN`; fields
that were always there keep being hashed at their defaults, so today's hashes do not move
(`tests/api/test_hash_stability.py` pins the examples' hashes).
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter

from lora_contract.types import LoRAJobSpec, Retrain


class UnclassifiedFieldError(TypeError):
    """A spec field says neither whether it retrains nor that its fields decide one by one."""


def _marker(model: type[BaseModel], name: str) -> Retrain:
    field = model.model_fields[name]
    found = [m for m in field.metadata if isinstance(m, Retrain)]
    if len(found) != 1:
        raise UnclassifiedFieldError(
            f"{model.__name__}.{name}: mark it Annotated[..., RETRAINS | KEEPS_RUN | PER_FIELD]"
        )
    return found[0]


def _section(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The model class of a PER_FIELD field (Optional allowed)."""
    annotation = model.model_fields[name].annotation
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for candidate in (annotation, *options):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise UnclassifiedFieldError(f"{model.__name__}.{name}: PER_FIELD needs a model-typed field")


def _wire_name(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name


def retrain_classification(
    model: type[BaseModel] = LoRAJobSpec, prefix: str = ""
) -> dict[str, bool]:
    """Every classified wire path (`training.learningRate`) -> True if a change retrains."""
    result: dict[str, bool] = {}
    for name in model.model_fields:
        path = f"{prefix}{_wire_name(model, name)}"
        marker = _marker(model, name)
        if marker is Retrain.per_field:
            result.update(retrain_classification(_section(model, name), f"{path}."))
        else:
            result[path] = marker in (Retrain.yes, Retrain.when_set)
    return result


# Serialises by each value's own type (enums to values, models by alias), as model_dump does.
_VALUES: TypeAdapter[Any] = TypeAdapter(Any)


def _wire_default(model: type[BaseModel], name: str) -> Any:
    """A field's declared default as it appears in the wire form (enums as values)."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    return _VALUES.dump_python(default, mode="json", by_alias=True)


def _hashed(model: type[BaseModel], name: str, marker: Retrain, wire: dict[str, Any]) -> bool:
    key = _wire_name(model, name)
    if key not in wire:
        return False
    if marker is Retrain.yes:
        return True
    return marker is Retrain.when_set and wire[key] != _wire_default(model, name)


def _training_part(model: type[BaseModel], wire: dict[str, Any]) -> dict[str, Any]:
    """The retraining fields of one (wire-form) section, recursing into PER_FIELD sections."""
    relevant: dict[str, Any] = {}
    for name in model.model_fields:
        key = _wire_name(model, name)
        marker = _marker(model, name)
        if marker is Retrain.per_field and isinstance(wire.get(key), dict):
            relevant[key] = _training_part(_section(model, name), wire[key])
        elif _hashed(model, name, marker, wire):
            relevant[key] = wire[key]
    return relevant


def wire_spec_hash(wire: dict[str, Any]) -> str:
    """Hash of the retraining fields of a normalised wire-form spec; 12 hex chars. Stored in
    every run's status: changing what it covers retrains every job after an upgrade."""
    blob = json.dumps(_training_part(LoRAJobSpec, wire), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def training_spec_hash(spec: LoRAJobSpec) -> str:
    """Hash of the normalised (defaults filled, camelCase) training-relevant spec."""
    return wire_spec_hash(spec.model_dump(by_alias=True, mode="json"))
