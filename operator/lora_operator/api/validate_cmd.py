"""`lorajob validate FILE...`: check LoRAJob manifests against the API types and the CRD schema."""

from __future__ import annotations

import argparse
import sys

from lora_contract.types import API_VERSION, KIND

from .loading import SpecError, load_documents, parse_lorajob
from .schema_check import check_against_crd


def validate_file(path: str) -> list[str]:
    """Problems found in one file (empty: valid). Both checks run so every problem is listed."""
    docs = load_documents(path)
    jobs = [d for d in docs if not isinstance(d, dict) or d.get("kind", KIND) == KIND]
    if not jobs:
        return [f"{path}: no LoRAJob found in the file"]
    problems = []
    for i, doc in enumerate(jobs):
        where = f"{path}[{i}]" if len(jobs) > 1 else path
        problems += [f"{where}: {p}" for p in document_problems(doc, where)]
    return problems


def document_problems(doc: object, where: str) -> list[str]:
    """The types' problems, then every CRD schema error and failing CEL rule on a field they do
    not already name. The types stop at a section's first cross-field error; the API server
    lists every rule that fails, and so does this."""
    try:
        parse_lorajob(doc, where)
        typed: list[str] = []
    except SpecError as exc:
        typed = exc.problems
    if not isinstance(doc, dict) or (doc.get("apiVersion"), doc.get("kind")) != (API_VERSION, KIND):
        return typed
    named = {_field(p) for p in typed}
    crd = [p for p in check_against_crd(doc) if _field(p) not in named]
    return typed + [f"CRD schema: {p}" for p in crd]


def _field(problem: str) -> str:
    """`spec.lora.r: must be ...` -> `spec.lora.r`"""
    return problem.split(": ", 1)[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lorajob validate", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        try:
            problems = validate_file(path)
        except SpecError as exc:
            problems = [f"{exc.source}: {p}" for p in exc.problems]
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"ok: {path}")
    return 2 if failed else 0
