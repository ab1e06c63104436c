"""The four packages keep their boundaries: the contract imports neither side, the operator and
the trainer import each other never and the devkit (emulator, S3 stand-in, demo) never, and no
shipped package imports kmock or moto. Every import in every file counts, also inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "lora_contract": ROOT / "contract" / "lora_contract",
    "lora_operator": ROOT / "operator" / "lora_operator",
    "lora_trainer": ROOT / "trainer-image" / "lora_trainer",
    "lora_devkit": ROOT / "devkit" / "lora_devkit",
}
TEST_ONLY = {"kmock", "moto", "pytest"}
KUBE_CLIENTS = {"kopf", "kubernetes", "kubernetes_asyncio"}
FORBIDDEN = {
    "lora_contract": {"lora_operator", "lora_trainer", "lora_devkit", "torch"}
    | KUBE_CLIENTS
    | TEST_ONLY,
    # The operator talks to the API through kubernetes_asyncio only (controller/kube.py); the
    # synchronous client is the devkit's.
    "lora_operator": {"lora_trainer", "lora_devkit", "peft", "trl", "deepspeed", "kubernetes"}
    | TEST_ONLY,
    "lora_trainer": {"lora_operator", "lora_devkit"} | KUBE_CLIENTS | TEST_ONLY,
}


def top_level_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module -> files of the package that import it (relative imports excluded: they
    cannot leave the package, which `test_relative_imports_stay_inside` checks)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_it_must_not(package: str) -> None:
    imports = top_level_imports(FOLDERS[package])
    ties = {name: sorted(files) for name, files in imports.items() if name in FORBIDDEN[package]}
    assert not ties, f"{package} imports {ties}"


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_relative_imports_stay_inside(package: str) -> None:
    folder = FOLDERS[package]
    for path in folder.rglob("*.py"):
        depth = len(path.relative_to(folder).parts)  # package components above the file
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level <= depth, f"{path}: relative import above {package}"


def test_the_walk_sees_real_imports() -> None:
    """The checker itself: it finds the ties that do exist (devkit -> operator, trainer)."""
    devkit = top_level_imports(FOLDERS["lora_devkit"])
    assert {"lora_operator", "lora_contract", "kmock"} <= set(devkit)
    assert "lora_contract" in top_level_imports(FOLDERS["lora_trainer"])


@pytest.mark.parametrize(
    ("pyproject", "package"),
    [
        ("pyproject.toml", "lora_operator"),
        ("contract/pyproject.toml", "lora_contract"),
        ("trainer-image/pyproject.toml", "lora_trainer"),
        ("devkit/pyproject.toml", "lora_devkit"),
    ],
)
def test_each_distribution_ships_one_package(pyproject: str, package: str) -> None:
    config = tomllib.loads((ROOT / pyproject).read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == [f"{package}*"]
    dependencies = " ".join(config["project"]["dependencies"])
    for other in ("kmock", "moto"):
        assert package == "lora_devkit" or other not in dependencies, (pyproject, other)
