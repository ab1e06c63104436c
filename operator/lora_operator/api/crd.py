"""Generate the LoRAJob CustomResourceDefinition from the pydantic types.

The pydantic models are the single source; this turns their JSON Schema into a Kubernetes
*structural* OpenAPI v3 schema ($refs inlined, no `additionalProperties: false`, nullable unions
flattened, draft-2020 exclusive bounds rewritten), adds the CEL rules that mirror the models'
cross-field validators, the status subresource and the printer columns. `make crds` writes the
result to `crds/` and to the chart; a test fails when the committed files drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lora_contract.types import (
    CATEGORIES,
    CPU_OPTIMIZERS,
    GROUP,
    KIND,
    ONE_CONFIG_SOURCE,
    PLURAL,
    PREFERENCE_FORMATS,
    SERVING_RUN_WITH_MANUAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    VLLM_LORA_RANKS,
    DatasetSpec,
    LoRAJobSpec,
    LoRAJobStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"
REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_TARGETS = [
    REPO_ROOT / "crds" / CRD_FILENAME,
    REPO_ROOT / "charts" / "lora-operator" / "crds" / CRD_FILENAME,
]

# Each rule mirrors a pydantic validator in types.py (same wording), so `kubectl apply` and
# `lorajob plan` reject the same objects with the same message. `path` is where the rule is
# attached (a dotted path of spec properties; "" is the spec itself).
CEL_RULES: list[dict[str, str]] = [
    {
        "path": "",
        "rule": "!has(self.quantization) || !has(self.quantization.mode) || "
        "self.quantization.mode == 'none' || !has(self.resources) || "
        "!has(self.resources.gpuType) || self.resources.gpuType != 'cpu'",
        "message": "quantization int8/nf4 needs a CUDA GPU: resources.gpuType must not be 'cpu'",
        "fieldPath": ".quantization.mode",
    },
    {
        "path": "",
        "rule": "!has(self.training) || !has(self.training.optimizer) || "
        f"self.training.optimizer in {sorted(o.value for o in CPU_OPTIMIZERS)} || "
        "!has(self.resources) || !has(self.resources.gpuType) || "
        "self.resources.gpuType != 'cpu'",
        "message": "8-bit and paged optimizers need a CUDA GPU (bitsandbytes): use adamw_torch "
        "with resources.gpuType 'cpu'",
        "fieldPath": ".training.optimizer",
    },
    {
        "path": "",
        "rule": "!has(self.training) || !has(self.training.earlyStoppingPatience) || "
        "has(self.dataset.evalSource) || !has(self.dataset.evalSplit) || "
        "self.dataset.evalSplit > 0.0",
        "message": "training.earlyStoppingPatience needs eval data: set dataset.evalSplit > 0 or "
        "dataset.evalSource",
        "fieldPath": ".training.earlyStoppingPatience",
    },
    {
        "path": "",
        "rule": "!has(self.serving) || !has(self.serving.enabled) || !self.serving.enabled || "
        f"!has(self.lora) || !has(self.lora.r) || self.lora.r <= {VLLM_LORA_RANKS[-1]}",
        "message": f"serving.enabled: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}",
        "fieldPath": ".lora.r",
    },
    {
        "path": "serving",
        "rule": "(has(self.promote) && self.promote == 'manual') == has(self.run)",
        "message": SERVING_RUN_WITH_MANUAL,
        "fieldPath": ".run",
    },
    # method dpo (types.preference_errors: the same rules, the same words)
    {
        "path": "",
        "rule": "!has(self.dpo) || (has(self.method) && self.method == 'dpo')",
        "message": "dpo: set only with method dpo",
        "fieldPath": ".dpo",
    },
    {
        "path": "",
        "rule": "!has(self.method) || self.method != 'dpo' || "
        f"self.dataset.format in {sorted(f.value for f in PREFERENCE_FORMATS)}",
        "message": "dataset.format holds no preference pairs with method dpo: use "
        + " or ".join(sorted(f.value for f in PREFERENCE_FORMATS)),
        "fieldPath": ".dataset.format",
    },
    {
        "path": "",
        "rule": "!has(self.method) || self.method != 'dpo' || !has(self.dataset.packing) || "
        "!self.dataset.packing",
        "message": "dataset.packing: method dpo keeps each pair whole (set packing false)",
        "fieldPath": ".dataset.packing",
    },
    {
        "path": "",
        "rule": "!has(self.dpo) || !has(self.dpo.maxPromptLength) || "
        "self.dpo.maxPromptLength < (has(self.dataset.maxSeqLength) ? "
        f"self.dataset.maxSeqLength : {DatasetSpec.model_fields['max_seq_length'].default})",
        "message": "dpo.maxPromptLength must be below dataset.maxSeqLength",
        "fieldPath": ".dpo.maxPromptLength",
    },
    {
        "path": "baseModel",
        "rule": "!has(self.config) || !has(self.configMapRef)",
        "message": ONE_CONFIG_SOURCE,
        "fieldPath": ".configMapRef",
    },
    {
        "path": "distributed",
        "rule": "has(self.nodes) == has(self.gpusPerNode)",
        "message": "set both nodes and gpusPerNode, or neither for automatic placement",
    },
    {
        "path": "distributed",
        "rule": "!has(self.nodes) || !has(self.gpusPerNode) || "
        "self.nodes * self.gpusPerNode <= 4096",
        "message": "nodes x gpusPerNode must be at most 4096",
    },
    {
        "path": "distributed",
        "rule": "!has(self.offload) || self.offload == 'none' || !has(self.strategy) || "
        "self.strategy != 'ddp'",
        "message": "offload: cpu needs a DeepSpeed strategy (or auto), not ddp",
    },
    {
        "path": "lora",
        "rule": "!has(self.targetModules) || !('all-linear' in self.targetModules) || "
        "size(self.targetModules) == 1",
        "message": "'all-linear' must be the only entry of targetModules",
    },
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    # kstatus' summary (controller/health.py): what `kubectl wait --for=condition=Ready` waits on
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.name"},
    {"name": "Quant", "type": "string", "jsonPath": ".spec.quantization.mode"},
    {"name": "Placement", "type": "string", "jsonPath": ".status.plan.placement"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressSummary"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "format": "float"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Adapter", "type": "string", "jsonPath": ".status.adapterURI", "priority": 1},
    {"name": "Hours", "type": "number", "jsonPath": ".status.plan.forecast.hours", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Serving-Run", "type": "string", "jsonPath": ".status.servingRun", "priority": 1},
]

_DROP_KEYS = {"title", "additionalProperties", "$defs", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs and rewrite JSON Schema idioms Kubernetes' structural schemas do not accept."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return _structural({**options[0], **rest}, defs)
        node = {**rest, "anyOf": options}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _structural(value, defs)
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        if additional:  # typed map, e.g. dict[str, str]
            out["additionalProperties"] = _structural(additional, defs)
        else:  # dict[str, Any]: keep whatever the writer put there
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif additional is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _json_schema(model: type[LoRAJobSpec] | type[LoRAJobStatus], mode: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[arg-type]
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def _attach_rules(spec_schema: dict[str, Any]) -> None:
    for rule in CEL_RULES:
        target = spec_schema
        for part in filter(None, rule["path"].split(".")):
            target = target["properties"][part]
        entry = {k: v for k, v in rule.items() if k != "path"}
        target.setdefault("x-kubernetes-validations", []).append(entry)


def _status_schema() -> dict[str, Any]:
    schema = _json_schema(LoRAJobStatus, "serialization")
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def build_openapi_schema() -> dict[str, Any]:
    spec = _json_schema(LoRAJobSpec, "validation")
    _attach_rules(spec)
    return {
        "type": "object",
        "description": "A LoRA/QLoRA fine-tuning job: sized by a GPU memory model, queued under "
        "GPU quotas, checkpointed to S3, resumable, optionally served with KServe/vLLM.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63}},
            },
            "spec": spec,
            "status": _status_schema(),
        },
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for LoRAJob."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "lora-operator",
                "app.kubernetes.io/part-of": "lora-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": build_openapi_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated from contract/lora_contract/types.py by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lorajob crds", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write crds/ and the chart's copy")
    group.add_argument("--check", action="store_true", help="exit 1 if the committed files drift")
    args = parser.parse_args(argv)
    text = render_crd_yaml()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    stale = []
    for target in CRD_TARGETS:
        if args.write:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target.relative_to(REPO_ROOT)}")
        elif not target.exists() or target.read_text() != text:
            stale.append(str(target.relative_to(REPO_ROOT)))
    if stale:
        print(f"CRD out of date: {', '.join(stale)}; run `make crds`", file=sys.stderr)
        return 1
    return 0
