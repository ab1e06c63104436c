"""Check an object against the generated CRD offline, roughly as the API server would.

The Kubernetes emulator used in tests does no schema validation, so tests (and `lorajob validate
--crd`) use this: apply the schema's defaults, validate the OpenAPI v3 schema (draft-4 bounds, as
Kubernetes does), then evaluate every `x-kubernetes-validations` CEL rule with cel-python.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from .crd import build_openapi_schema


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill missing properties that have a `default`, recursively, like API-server defaulting."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, prop in schema["properties"].items():
            if name not in obj and "default" in prop:
                obj[name] = copy.deepcopy(prop["default"])
            if name in obj:
                obj[name] = apply_defaults(prop, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


def _schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
    return errors


def _as_schema_types(schema: dict[str, Any], obj: Any) -> Any:
    """Kubernetes gives `type: number` fields CEL type double even when the JSON holds `0`."""
    if schema.get("type") == "number" and isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        return {k: _as_schema_types(props.get(k, {}), v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_schema_types(schema.get("items", {}), item) for item in obj]
    return obj


def _cel_errors(schema: dict[str, Any], obj: Any, path: str, env: celpy.Environment) -> list[str]:
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": json_to_cel(_as_schema_types(schema, obj))})
        except CELEvalError as exc:
            errors.append(f"{path}: rule {rule['rule']!r} could not be evaluated: {exc.args[0]}")
            continue
        if not bool(result):
            where = path + rule.get("fieldPath", "")
            errors.append(f"{where}: {rule['message']}")
    if isinstance(obj, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in obj:
                errors += _cel_errors(prop, obj[name], f"{path}.{name}", env)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]", env)
    return errors


def check_against_crd(obj: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """Problems the API server would report for this LoRAJob (empty list: accepted)."""
    schema = schema or build_openapi_schema()
    defaulted = apply_defaults(schema, copy.deepcopy(obj))
    errors = _schema_errors(schema, defaulted)
    if errors:  # CEL runs only on schema-valid objects, as in Kubernetes
        return errors
    spec_schema = schema["properties"]["spec"]
    return _cel_errors(spec_schema, defaulted.get("spec"), "spec", celpy.Environment())
