"""The trainer image is complete: every third-party module the trainer imports (directly, or through
the lora_operator modules it uses, their packages' __init__ files included) is pinned in
trainer-image/requirements.txt with pyproject's version, and the Dockerfile copies every
lora_operator file the trainer needs, from a pinned base, as a non-root user."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "trainer-image" / "lora_trainer"
OPERATOR = ROOT / "operator"
REQUIREMENTS = ROOT / "trainer-image" / "requirements.txt"
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"


def module_of(path: Path) -> str:
    """'operator/lora_operator/api/types.py' -> 'lora_operator.api.types'."""
    rel = path.relative_to(OPERATOR if path.is_relative_to(OPERATOR) else TRAINER.parent)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (also inside functions), with
    relative imports resolved against the file's own package."""
    package = module_of(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                base = node.module
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def operator_files(module: str) -> list[Path]:
    """The file of `module` (if it is one of ours) and the __init__.py of every package above."""
    parts = module.split(".")
    files = [OPERATOR / Path(*parts[:i]) / "__init__.py" for i in range(1, len(parts) + 1)]
    files.append((OPERATOR / Path(*parts)).with_suffix(".py"))
    return [f for f in files if f.exists()]


def closure() -> tuple[set[Path], set[str]]:
    """(lora_operator files the trainer loads, top-level third-party modules it imports)."""
    todo = list(TRAINER.glob("*.py"))
    seen: set[Path] = set()
    third_party: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            top = name.split(".")[0]
            if top == "lora_operator":
                todo.extend(operator_files(name))
            elif top != "lora_trainer" and top not in sys.stdlib_module_names:
                third_party.add(top)
    return {p for p in seen if p.is_relative_to(OPERATOR)}, third_party


def pinned(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_closure_follows_package_inits_and_relative_imports() -> None:
    files, third_party = closure()
    rel = {p.relative_to(OPERATOR).as_posix() for p in files}
    # api/__init__.py imports api/hashing.py; storage.py imports .api.layout relatively.
    assert {"lora_operator/__init__.py", "lora_operator/api/__init__.py"} <= rel
    assert {"lora_operator/api/hashing.py", "lora_operator/storage.py"} <= rel
    assert "lora_operator/controller/__init__.py" not in rel
    assert {"pydantic", "minio", "urllib3", "torch", "peft"} <= third_party


def test_every_import_is_pinned() -> None:
    requirements = pinned(REQUIREMENTS.read_text())
    dists = packages_distributions()
    missing = []
    for module in sorted(closure()[1]):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & set(requirements):
            missing.append(f"{module} (distribution {sorted(names)})")
    assert not missing, f"not pinned in {REQUIREMENTS.name}: {missing}"
    assert {"torch", "transformers", "peft", "minio", "deepspeed"} <= set(requirements)


def test_versions_agree_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["trainer"]
    declared = pinned("\n".join(specs))
    for name, version in pinned(REQUIREMENTS.read_text()).items():
        if name in declared:
            assert declared[name] == version, (
                f"{name}: {version} here, {declared[name]} in pyproject"
            )
    missing = set(declared) - set(pinned(REQUIREMENTS.read_text())) - {"lora-operator"}
    assert not missing, f"in pyproject's trainer extra but not in requirements.txt: {missing}"


def dockerfile_copies() -> list[str]:
    """Source paths of the COPY instructions that read the build context (not --from a stage)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_dockerfile_copies_every_module_the_trainer_loads() -> None:
    sources = dockerfile_copies()
    needed = sorted(closure()[0]) + sorted(TRAINER.glob("*.py"))
    uncovered = [
        p.relative_to(ROOT).as_posix()
        for p in needed
        if not any(p.relative_to(ROOT).as_posix().startswith(s.rstrip("/")) for s in sources)
    ]
    assert not uncovered, f"the Dockerfile does not COPY: {uncovered}"


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
