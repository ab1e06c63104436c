"""Check an object against the generated CRD offline, roughly as the API server would.

`check_against_crd` (tests, `lorajob validate`) applies the schema's defaults, validates the
OpenAPI v3 schema (draft-4 bounds, as Kubernetes does), then evaluates every
`x-kubernetes-validations` CEL rule with cel-python. `prune_unknown` and `field_errors` do the
same for any CRD's schema but answer in the API server's terms (pruned paths, `FieldError`s with
its wording), which is what the devkit's Kubernetes emulator needs to refuse objects as a real API
server does.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
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


def _schema_errors(schema: dict[str, Any], obj: Any) -> tuple[list[str], bool]:
    """Every OpenAPI error, and whether one blocks the CEL rules (a wrong type or an unsupported
    enum value: the API server skips the rules then, since they could not read the value)."""
    validator = jsonschema.Draft4Validator(schema)
    errors, blocking = [], False
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
        blocking = blocking or err.validator in ("type", "enum")
    return errors, blocking


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


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    """Compiling a CEL rule takes milliseconds; the emulator checks every write, so compile once."""
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(
    schema: dict[str, Any], obj: Any, path: str, env: celpy.Environment, unevaluable: bool = True
) -> list[str]:
    """Every failing rule under `path`; rules that cannot be evaluated are listed only if
    `unevaluable` (off beside schema errors: a missing required field makes them noise)."""
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        program = _program(rule["rule"])
        try:
            result = program.evaluate({"self": json_to_cel(_as_schema_types(schema, obj))})
        except CELEvalError as exc:
            if unevaluable:
                errors.append(
                    f"{path}: rule {rule['rule']!r} could not be evaluated: {exc.args[0]}"
                )
            continue
        if not bool(result):
            where = path + rule.get("fieldPath", "")
            errors.append(f"{where}: {rule['message']}")
    if isinstance(obj, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in obj:
                errors += _cel_errors(prop, obj[name], f"{path}.{name}", env, unevaluable)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]", env, unevaluable)
    return errors


def check_against_crd(obj: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """Problems the API server would report for this LoRAJob (empty list: accepted): every
    schema error and every failing CEL rule, as the server lists them all in one answer; the
    rules are skipped only when a value has the wrong type or enum value (as in Kubernetes)."""
    schema = schema or build_openapi_schema()
    defaulted = apply_defaults(schema, copy.deepcopy(obj))
    errors, blocking = _schema_errors(schema, defaulted)
    if blocking:
        return errors
    spec_schema = schema["properties"]["spec"]
    env = celpy.Environment()
    return errors + _cel_errors(spec_schema, defaulted.get("spec"), "spec", env, not errors)


# ------------------------------------------------------------- the API server's own terms

_NO_VALUE = object()
_REASONS = {
    "Invalid value": "FieldValueInvalid",
    "Required value": "FieldValueRequired",
    "Unsupported value": "FieldValueNotSupported",
    "Too long": "FieldValueTooLong",
    "Too many": "FieldValueTooMany",
    "Duplicate value": "FieldValueDuplicate",
}
_BLOCKING = (
    "some validation rules were not checked because the object was invalid; correct the "
    "existing errors to complete validation"
)


def _go_value(value: Any) -> str:
    """A value as Go's field errors print it (`%q` for strings, `%v` for numbers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return '"null"'
    return json.dumps(value if isinstance(value, str) else _type_name(value))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


@dataclass(frozen=True)
class FieldError:
    """One entry of a 422's `details.causes`, printed like the API server's `field.Error`."""

    field: str
    type: str  # "Invalid value", "Required value", "Unsupported value", "Too long", ...
    detail: str = ""
    value: Any = _NO_VALUE
    type_invalid: bool = False  # a wrong JSON type: CEL rules are not run on such objects

    @property
    def reason(self) -> str:
        return "FieldValueTypeInvalid" if self.type_invalid else _REASONS.get(self.type, "")

    def body(self) -> str:
        """`Invalid value: 0: spec.lora.r in body should be ...` (the cause's message)."""
        text = self.type
        if self.value is not _NO_VALUE:
            text += f": {_go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def prune_unknown(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Drop fields the structural schema does not declare, in place, as the API server does
    (`x-kubernetes-preserve-unknown-fields` keeps them); returns their paths. The root's
    apiVersion/kind/metadata are the server's own and are never pruned."""
    pruned: list[str] = []
    if isinstance(obj, dict):
        props: dict[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        keep = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for name in list(obj):
            where = _join(path, name)
            if not path and name in ("apiVersion", "kind", "metadata"):
                continue
            if name in props:
                pruned += prune_unknown(props[name], obj[name], where)
            elif isinstance(additional, dict):
                pruned += prune_unknown(additional, obj[name], where)
            elif not keep and additional is not True:
                del obj[name]
                pruned.append(where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            pruned += prune_unknown(schema["items"], item, _join(path, index))
    return pruned


def _bound(schema: dict[str, Any], key: str) -> str:
    value = schema[key]
    return _go_value(value)


def _field_error(err: Any, root: str) -> FieldError:
    """jsonschema's error -> the wording of Kubernetes' OpenAPI validation (kube-openapi)."""
    field = root
    for part in err.absolute_path:
        field = _join(field, part)
    shown = field or "<nil>"
    value, schema, kind = err.instance, err.schema, err.validator
    if kind == "required":
        found = re.match(r"^'(.*)' is a required property$", err.message)
        missing = found.group(1) if found else str(err.validator_value)
        return FieldError(_join(field, missing), "Required value")
    if kind == "type":
        expected = err.validator_value
        detail = f"{shown} in body must be of type {expected}: {json.dumps(_type_name(value))}"
        return FieldError(shown, "Invalid value", detail, _type_name(value), type_invalid=True)
    if kind == "enum":
        supported = ", ".join(_go_value(v) for v in err.validator_value)
        return FieldError(shown, "Unsupported value", f"supported values: {supported}", value)
    if kind in ("minimum", "maximum"):
        lower = kind == "minimum"
        word = "greater than" if lower else "less than"
        if not schema.get("exclusiveMinimum" if lower else "exclusiveMaximum"):
            word += " or equal to"
        detail = f"{shown} in body should be {word} {_bound(schema, kind)}"
        return FieldError(shown, "Invalid value", detail, value)
    if kind == "minLength":
        detail = f"{shown} in body should be at least {err.validator_value} chars long"
        return FieldError(shown, "Invalid value", detail, value)
    if kind == "maxLength":
        return FieldError(shown, "Too long", f"may not be more than {err.validator_value} bytes")
    if kind == "pattern":
        detail = f"{shown} in body should match '{err.validator_value}'"
        return FieldError(shown, "Invalid value", detail, value)
    if kind == "minItems":
        detail = f"{shown} in body should have at least {err.validator_value} items"
        return FieldError(shown, "Invalid value", detail, value)
    if kind == "maxItems":
        detail = f"must have at most {err.validator_value} items"
        return FieldError(shown, "Too many", detail, len(value))
    if kind == "uniqueItems":
        return FieldError(shown, "Duplicate value", "", value)
    return FieldError(shown, "Invalid value", err.message, value)


@functools.lru_cache(maxsize=32)
def _validator(schema_json: str) -> Any:
    return jsonschema.Draft4Validator(json.loads(schema_json))


@functools.lru_cache(maxsize=4096)
def _rule_outcome(rule: str, self_json: str) -> bool | str:
    """A rule's verdict on a value, or why it could not be evaluated. Memoized by the value's
    JSON: the emulator re-checks an unchanged spec on every write to its object (kopf's
    annotation patches), and celpy takes milliseconds per rule."""
    try:
        return bool(_program(rule).evaluate({"self": json_to_cel(json.loads(self_json))}))
    except CELEvalError as exc:
        return str(exc.args[0])


def _cel_field_errors(schema: dict[str, Any], obj: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if obj is None:
        return errors
    rules = schema.get("x-kubernetes-validations", [])
    value_json = json.dumps(_as_schema_types(schema, obj)) if rules else ""
    for rule in rules:
        result = _rule_outcome(rule["rule"], value_json)
        if isinstance(result, str):
            detail = f"rule {rule['rule']!r} could not be evaluated: {result}"
            errors.append(FieldError(path or "<nil>", "Invalid value", detail, _type_name(obj)))
            continue
        if not result:
            where = path + rule.get("fieldPath", "")
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            errors.append(FieldError(where or "<nil>", "Invalid value", message, _type_name(obj)))
    if isinstance(obj, dict):
        props: dict[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for name, value in obj.items():
            sub = props.get(name, additional if isinstance(additional, dict) else None)
            if sub is not None:
                errors += _cel_field_errors(sub, value, _join(path, name))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            errors += _cel_field_errors(schema["items"], item, _join(path, index))
    return errors


def field_errors(schema: dict[str, Any], obj: Any, path: str = "") -> list[FieldError]:
    """What the API server's validation says about `obj` (the node of the object at `path`,
    e.g. "status" for a status write, "" for the whole object) against `schema` (that node's
    schema): OpenAPI errors first; CEL rules too unless a value has the wrong type or an
    unsupported enum value, when the server skips them and says so."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    found = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    errors = [_field_error(err, path) for err in found]
    if any(e.type_invalid or e.type == "Unsupported value" for e in errors):
        return [*errors, FieldError("<nil>", "Invalid value", _BLOCKING, None)]
    return errors + _cel_field_errors(schema, obj, path)
