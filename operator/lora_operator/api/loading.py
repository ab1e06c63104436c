"""Load LoRAJob manifests from YAML with one clear message per problem (never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lora_contract.bounded_parse import TooDeepError, load_yaml_all
from lora_contract.errors import describe_validation_error
from lora_contract.types import API_VERSION, KIND, LoRAJob

from .cron import schedule_problems

# The API server takes no request over 3 MiB; a manifest file past that is not one to apply.
MAX_MANIFEST_BYTES = 3 * 1024 * 1024


class SpecError(ValueError):
    """Invalid input; `problems` holds one human-readable line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def parse_lorajob(obj: Any, source: str = "<object>") -> LoRAJob:
    if not isinstance(obj, dict):
        raise SpecError(
            source, [f"expected a mapping (a LoRAJob object), got {type(obj).__name__}"]
        )
    problems = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION} (got {obj.get('apiVersion')!r})")
    if obj.get("kind") != KIND:
        problems.append(f"kind: must be {KIND} (got {obj.get('kind')!r})")
    if problems:
        raise SpecError(source, problems)
    try:
        job = LoRAJob.model_validate(obj)
    except ValidationError as exc:
        raise SpecError(source, describe_validation_error(exc)) from None
    # the contract checks a cron's shape; its values and the zone need a parser and tzdata
    problems = schedule_problems(job.spec.schedule)
    if problems:
        raise SpecError(source, problems)
    return job


def load_documents(path: str | Path) -> list[Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            problem = f"larger than {MAX_MANIFEST_BYTES} bytes, the API server's request limit"
            raise SpecError(str(path), [problem])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        problem = f"not UTF-8 text (byte 0x{byte} at offset {exc.start}): save it as UTF-8"
        raise SpecError(str(path), [problem]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        return [doc for doc in load_yaml_all(text, str(path)) if doc is not None]
    except TooDeepError as exc:
        raise SpecError(exc.source, [exc.problem]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(path), [f"malformed YAML{where}: {problem}"]) from None


def load_lorajobs(path: str | Path) -> list[LoRAJob]:
    """Every LoRAJob in a (multi-document) YAML file; other kinds are skipped."""
    docs = load_documents(path)
    jobs = [
        parse_lorajob(doc, f"{path}[{i}]" if len(docs) > 1 else str(path))
        for i, doc in enumerate(docs)
        if not isinstance(doc, dict) or doc.get("kind", KIND) == KIND
    ]
    if not jobs:
        raise SpecError(str(path), ["no LoRAJob found in the file"])
    return jobs
