"""`lorajob validate` with the operator's runtime dependencies alone (the operator image installs
no dev extras: validate failed there with ModuleNotFoundError for celpy), and every failing CEL
rule listed, one line per field, as the API server lists them.

The dev-only set is computed from the installed distributions' metadata, not written down: the
closure of `lora-operator[dev]` minus the closure of `lora-operator[operator]` (which holds the
base dependencies and the `plan` extra). A subprocess imports nothing from that set.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from apidata import EXAMPLES, MINIMAL, ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lora_operator.api.schema_check import check_against_crd

PROJECT = "lora-operator"
DOCKERFILE = ROOT / "operator" / "Dockerfile"
VALIDATE_NEEDS = {"cel-python", "cronsim", "jsonschema", "pydantic", "pyyaml", "lora-contract"}


def closure(name: str, extras: frozenset[str]) -> set[str]:
    """Every installed distribution `name[extras]` pulls in, itself included (canonical names)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    found: set[str] = set()

    def walk(dist: str, wanted: frozenset[str]) -> None:
        key = (canonicalize_name(dist), wanted)
        if key in seen:
            return
        seen.add(key)
        try:
            lines = requires(dist) or []
        except PackageNotFoundError:
            return  # not installed here (a marker for another Python): cannot be imported
        found.add(key[0])
        for line in lines:
            req = Requirement(line)
            envs = [{"extra": extra} for extra in (*wanted, "")]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                walk(req.name, frozenset(req.extras))

    walk(name, extras)
    return found


@cache
def dev_only() -> frozenset[str]:
    runtime = closure(PROJECT, frozenset({"operator"}))
    return frozenset(closure(PROJECT, frozenset({"dev"})) - runtime)


def refused_modules() -> list[str]:
    """Top-level import names that only dev-only distributions provide."""
    banned = dev_only()
    names = {
        module
        for module, dists in packages_distributions().items()
        if dists and all(canonicalize_name(d) in banned for d in dists)
    }
    # editable installs (lora-trainer, lora-devkit) are not in packages_distributions()
    names |= {d.replace("-", "_") for d in banned}
    return sorted(names)


HOOK = """
import importlib.abc, json, sys
refused = set(json.loads(sys.argv[1]))
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in refused)
assert not loaded, f"imported before the hook: {loaded}"

class DevOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ModuleNotFoundError(f"No module named {name!r} (dev extras only)", name=name)
        return None

sys.meta_path.insert(0, DevOnly())
if sys.argv[2] == "--import":
    __import__(sys.argv[3])
    sys.exit(0)
from lora_operator.cli import main
sys.exit(main(sys.argv[2:]))
"""


def without_dev_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HOOK, json.dumps(refused_modules()), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_dev_only_set_is_what_the_dev_extra_adds() -> None:
    banned = dev_only()
    for tool in ("pytest", "mypy", "ruff", "mutmut", "lora-devkit", "lora-trainer", "moto"):
        assert tool in banned, tool
    runtime = closure(PROJECT, frozenset({"operator"}))
    assert runtime >= VALIDATE_NEEDS, VALIDATE_NEEDS - runtime
    assert not banned & VALIDATE_NEEDS


def test_the_hook_really_refuses_dev_only_imports() -> None:
    """Not a no-op: a dev-only module cannot be imported under it, a runtime one can."""
    refused = without_dev_extras("--import", "pytest")
    assert refused.returncode == 1
    assert "No module named 'pytest' (dev extras only)" in refused.stderr
    assert without_dev_extras("--import", "celpy").returncode == 0


def test_validate_runs_without_the_dev_extras() -> None:
    out = without_dev_extras("validate", *map(str, EXAMPLES))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [f"ok: {path}" for path in EXAMPLES]


def three_rules_broken() -> dict[str, Any]:
    """tiny-cpu with three cross-field rules broken: nf4 and a paged optimizer on CPU, nodes
    without gpusPerNode."""
    job = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    job["spec"]["quantization"] = {"mode": "nf4"}
    job["spec"]["training"]["optimizer"] = "paged_adamw_8bit"
    del job["spec"]["distributed"]["gpusPerNode"]
    return dict(job)


def test_validate_lists_every_failing_rule_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(three_rules_broken()))
    out = without_dev_extras("validate", str(path))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"error: {path}: spec.distributed: set both nodes and gpusPerNode, or neither for "
        "automatic placement",
        f"error: {path}: CRD schema: spec.quantization.mode: quantization int8/nf4 needs a CUDA "
        "GPU: resources.gpuType must not be 'cpu'",
        f"error: {path}: CRD schema: spec.training.optimizer: 8-bit and paged optimizers need a "
        "CUDA GPU (bitsandbytes): use adamw_torch with resources.gpuType 'cpu'",
    ]


def test_the_crd_check_lists_schema_errors_and_failing_rules_together() -> None:
    """As the API server: a bound violated does not hide the rules; a wrong type does."""
    obj = copy.deepcopy(MINIMAL)
    obj["spec"]["lora"] = {"r": 0}
    obj["spec"]["quantization"] = {"mode": "nf4"}
    obj["spec"]["resources"] = {"gpuType": "cpu"}
    assert check_against_crd(obj) == [
        "spec.lora.r: 0 is less than the minimum of 1",
        "spec.quantization.mode: quantization int8/nf4 needs a CUDA GPU: resources.gpuType "
        "must not be 'cpu'",
    ]
    obj["spec"]["lora"] = {"r": "eight"}
    assert check_against_crd(obj) == ["spec.lora.r: 'eight' is not of type 'integer'"]


def test_a_missing_field_does_not_add_unevaluable_rule_noise() -> None:
    obj = copy.deepcopy(MINIMAL)
    del obj["spec"]["dataset"]
    assert check_against_crd(obj) == ["spec: 'dataset' is a required property"]


def dockerfile_installs() -> list[list[str]]:
    """The argument lists of every `pip install` in the operator's Dockerfile."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    runs = [line.removeprefix("RUN ") for line in text.splitlines() if line.startswith("RUN ")]
    commands = [shlex.split(part) for run in runs for part in run.split("&&")]
    return [cmd[2:] for cmd in commands if cmd[:2] == ["pip", "install"]]


def test_the_operator_image_installs_what_validate_needs() -> None:
    targets = [arg for args in dockerfile_installs() for arg in args if not arg.startswith("-")]
    root = [t for t in targets if t == "." or t.startswith(".[")]
    assert len(root) == 1, targets
    extras = frozenset(re.findall(r"[\w-]+", root[0].removeprefix(".")))
    assert "dev" not in extras
    assert closure(PROJECT, extras) >= VALIDATE_NEEDS
    assert "./contract" in targets
    assert not any("devkit" in t or "trainer-image" in t for t in targets), targets


@pytest.mark.parametrize("name", ["cel-python", "jsonschema"])
def test_validates_needs_are_base_dependencies_of_the_package(name: str) -> None:
    base = {Requirement(line).name for line in requires(PROJECT) or [] if "extra ==" not in line}
    assert name in base
