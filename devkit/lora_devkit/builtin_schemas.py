"""Built-in kinds (Job, Pod, Service, ConfigMap, Secret, ServiceAccount) checked against their
published Kubernetes schemas, as the API server checks them.

Why: the emulator stored any built-in object as given, so a manifest or a template with a typo'd
or mistyped field passed in tests and failed on a cluster. The schemas come from the maintained
`kubernetes-validate` package (one JSON schema per kind and Kubernetes version, generated from
the API's OpenAPI), not from hand-written rules. What the schemas say — field types, required
fields, which fields exist — is what is checked; the API server's further Go validation (name
formats, value ranges, immutable fields) is not.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate.utils
import referencing

# The newest Kubernetes version the package carries; "strict" schemas make unknown fields errors.
SCHEMA_DIR = f"v{kubernetes_validate.utils.latest_version()}-local-strict"
VALIDATED = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("batch/v1", "Job"),
}
_MEMO_LIMIT = 5_000


@dataclass(frozen=True)
class Problems:
    """What is wrong with an object: unknown fields (400 under `fieldValidation=Strict`, else
    dropped with a warning), mistyped fields (400: the API server cannot decode them) and
    missing required fields (422 Invalid). Paths are as the API server prints them."""

    unknown: tuple[str, ...] = ()
    mistyped: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


def _schema_dir() -> Any:
    return resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", SCHEMA_DIR)


def _file_name(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    suffix = f"{group.split('.')[0]}-{version}" if group else version
    return f"{kind.lower()}-{suffix}.json"


@functools.cache
def _registry() -> referencing.Registry[Any]:
    definitions = json.loads(_schema_dir().joinpath("_definitions.json").read_text())
    resource = referencing.Resource.from_contents(definitions)
    return resource @ referencing.Registry()


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    schema = json.loads(_schema_dir().joinpath(_file_name(api_version, kind)).read_text())
    cls = jsonschema.validators.Draft202012Validator
    return cls(schema, registry=_registry())


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_memo: dict[str, Problems] = {}


def problems(obj: dict[str, Any]) -> Problems:
    """What the kind's schema refuses in `obj` (its `status` aside: the emulator lets stand-ins
    write it). Nothing for kinds outside `VALIDATED`."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    if (api_version, kind) not in VALIDATED:
        return Problems()
    body = {key: value for key, value in obj.items() if key != "status"}
    key = json.dumps(body, sort_keys=True, default=str)
    found = _memo.get(key)
    if found is not None:
        return found
    unknown: list[str] = []
    mistyped: list[str] = []
    required: list[str] = []
    errors = sorted(_validator(api_version, kind).iter_errors(body), key=lambda e: e.json_path)
    for error in errors:
        where = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            unknown += [_path([*where, name]) for name in error.instance if name not in declared]
        elif error.validator == "required" and isinstance(error.validator_value, list):
            present = error.instance if isinstance(error.instance, dict) else {}
            missing = [name for name in error.validator_value if name not in present]
            required += [_path([*where, name]) for name in missing]
        else:
            mistyped.append(f"{_path(where)}: {error.message}")  # never the root: a dict
    found = Problems(tuple(unknown), tuple(mistyped), tuple(dict.fromkeys(required)))
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[key] = found
    return found


def drop(obj: dict[str, Any], paths: tuple[str, ...]) -> None:
    """Remove the unknown fields `problems` named (what the API server does unless Strict)."""
    for path in paths:
        parts = path.replace("[", ".[").split(".")
        node: Any = obj
        for part in parts[:-1]:
            index = int(part[1:-1]) if part.startswith("[") else part
            node = node[index] if isinstance(index, int) else node.get(index)
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
