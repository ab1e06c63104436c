"""The trainer image is complete: every third-party module the trainer and the contract import is
pinned in trainer-image/requirements.txt with the version their pyproject.toml files declare, and
the Dockerfile installs exactly those two packages (whole folders, nothing hand-picked), from a
pinned base, as a non-root user. (That the trainer imports nothing of the operator or the devkit
is checked by tests/test_package_boundaries.py.)"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"lora_trainer": ROOT / "trainer-image", "lora_contract": ROOT / "contract"}
REQUIREMENTS = ROOT / "trainer-image" / "requirements.txt"
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"


def third_party_imports() -> set[str]:
    """Top-level non-stdlib modules imported anywhere in the image's two packages."""
    found: set[str] = set()
    for package, folder in PACKAGES.items():
        for path in (folder / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in PACKAGES}


def pinned(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#\"]+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_every_import_is_pinned() -> None:
    requirements = pinned(REQUIREMENTS.read_text())
    dists = packages_distributions()
    missing = []
    imports = third_party_imports()
    assert {"pydantic", "minio", "urllib3", "torch", "peft"} <= imports
    for module in sorted(imports):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & set(requirements):
            missing.append(f"{module} (distribution {sorted(names)})")
    assert not missing, f"not pinned in {REQUIREMENTS.name}: {missing}"
    assert {"torch", "transformers", "peft", "minio", "deepspeed"} <= set(requirements)


def test_versions_agree_with_the_packages_pyprojects() -> None:
    declared: dict[str, str] = {}
    for folder in PACKAGES.values():
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        declared |= pinned("\n".join(project["dependencies"]))
    declared.pop("lora-contract")  # installed from the copied folder
    requirements = pinned(REQUIREMENTS.read_text())
    for name, version in requirements.items():
        if name in declared:
            assert declared[name] == version, f"{name}: {version} here, {declared[name]} declared"
    missing = set(declared) - set(requirements)
    assert not missing, f"declared but not in requirements.txt: {missing}"


def test_dockerfile_installs_the_contract_and_trainer_folders_only() -> None:
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY\s+(?!--from)(\S+)\s+(\S+)", text, flags=re.MULTILINE)
    sources = {src.rstrip("/") for src, _ in copies}
    assert {"contract", "trainer-image"} <= sources, sources
    assert not any(s.startswith(("operator", "devkit")) for s in sources), sources
    install = next(r for r in dockerfile_runs(text) if "--no-deps" in r)
    dest = {src.rstrip("/"): dst.rstrip("/") for src, dst in copies}
    assert dest["contract"] in install and dest["trainer-image"] in install, install


def test_dockerfile_is_pinned_non_root_with_the_launcher_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases and all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases
    assert all("cuda" in b for b in bases)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users
    entrypoint = text.strip().splitlines()
    assert 'ENTRYPOINT ["python", "-m", "lora_trainer.launch"]' in entrypoint


def dockerfile_runs(text: str) -> list[str]:
    """RUN instructions with their continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_the_pinned_requirements() -> None:
    """torch, deepspeed and the rest are installed from requirements.txt's exact pins: either
    the pin is written out, or the install reads it from the copied requirements file."""
    text = DOCKERFILE.read_text()
    copied = re.search(r"^COPY\s+trainer-image/requirements\.txt\s+(\S+)", text, re.MULTILINE)
    assert copied, "the Dockerfile must COPY trainer-image/requirements.txt"
    req = re.escape(copied.group(1))
    pins = pinned(REQUIREMENTS.read_text())
    installs = [r for r in dockerfile_runs(text) if "pip install" in r]
    for name in ("torch", "deepspeed"):
        from_file = re.compile(rf"pip install [^&]*grep -E '\^{name}==' {req}")
        assert any(f"{name}=={pins[name]}" in run or from_file.search(run) for run in installs), (
            f"{name}=={pins[name]} is not installed by the Dockerfile"
        )
    rest = [r for r in installs if re.search(rf"grep -vE '\^\(torch\|deepspeed\)==' {req}", r)]
    assert rest and re.search(r"pip install -r (\S+)", rest[0]), "the other pins are not installed"
