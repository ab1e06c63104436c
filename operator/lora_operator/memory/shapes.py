"""Precomputed architectures of the shipped configs, so planning a shipped model never imports
torch or transformers (seconds of start-up, all of `lorajob plan`'s time before this file).

`shapes.json` holds, for each shipped config.json, the `Architecture` that counting it on the
meta device gives, keyed by a digest of the config's content: any config equal to a shipped one
(also a user's local copy) is answered from the file, anything else is counted as before.
`lorajob shapes --write` regenerates the file; `--check` (and a test) fails when it has drifted
from a fresh count (a config edited, or a transformers upgrade that changes the modules).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .architecture import Architecture, LinearModule
from .model_config import ModelConfig
from .registry import CONFIG_DIR, MODELS

SHAPES_FILE = Path(__file__).with_name("shapes.json")
FORMAT = 1


def config_digest(data: dict[str, Any]) -> str:
    """Content key of a parsed config.json: key order and whitespace do not matter."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def precomputed_architecture(config: ModelConfig) -> Architecture | None:
    """The shipped count for a config equal to a shipped one, else None (count it)."""
    arch = _decoded(config_digest(config.data))
    return None if arch is None else dataclasses.replace(arch, source=config.source)


@functools.lru_cache(maxsize=64)
def _decoded(digest: str) -> Architecture | None:
    """Decoded once per model: the operator plans a thousand jobs on a few models."""
    entry = _by_digest().get(digest)
    if entry is None:
        return None
    try:
        return _decode(entry)
    except (KeyError, TypeError, ValueError):
        return None  # written for other Architecture fields (a stale file): count instead


@functools.lru_cache(maxsize=1)
def _by_digest() -> dict[str, dict[str, Any]]:
    try:
        document = json.loads(SHAPES_FILE.read_text())
    except (OSError, ValueError):
        return {}  # no usable file: every model is counted, slower but right
    if document.get("format") != FORMAT:
        return {}
    return {entry["configSha256"]: entry for entry in document["models"].values()}


def encode(arch: Architecture) -> dict[str, Any]:
    """An Architecture as JSON (without `source`, which names where a config came from)."""
    fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch)}
    del fields["source"]
    fields["linears"] = [_linear_row(m) for m in arch.linears]
    fields["head"] = _linear_row(arch.head) if arch.head is not None else None
    return fields


def _decode(entry: dict[str, Any]) -> Architecture:
    fields = dict(entry["architecture"])
    fields["linears"] = tuple(LinearModule(*row) for row in fields["linears"])
    fields["head"] = LinearModule(*fields["head"]) if fields["head"] is not None else None
    return Architecture(source="", **fields)


def _linear_row(module: LinearModule) -> list[str | int]:
    return [module.name, module.in_features, module.out_features, module.copies]


def count_shipped() -> dict[str, tuple[dict[str, Any], Architecture]]:
    """Every shipped config (stem -> parsed data, meta-device count); imports torch."""
    from .architecture import count_architecture
    from .model_config import shipped_data

    counts: dict[str, tuple[dict[str, Any], Architecture]] = {}
    for stem in sorted(set(MODELS.values())):
        path = CONFIG_DIR / f"{stem}.json"
        data = shipped_data(path)
        counts[stem] = (data, count_architecture(f"shipped {path.name}", data))
    return counts


def document(counts: dict[str, tuple[dict[str, Any], Architecture]]) -> dict[str, Any]:
    """The content of shapes.json for these counts."""
    models = {
        stem: {"configSha256": config_digest(data), "architecture": encode(arch)}
        for stem, (data, arch) in counts.items()
    }
    return {
        "format": FORMAT,
        "generatedBy": "lorajob shapes --write",
        "transformers": metadata.version("transformers"),
        "models": models,
    }


def render(document: dict[str, Any]) -> str:
    """One linear per line (`[name, in, out, copies]`): small diffs when a config changes."""
    text = json.dumps(document, indent=1, sort_keys=True)
    innermost = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")  # an array of scalars only
    return innermost.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lorajob shapes",
        description="Regenerate or check the precomputed architectures of the shipped configs "
        f"({SHAPES_FILE.name}); needs torch and transformers.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {SHAPES_FILE}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render(document(count_shipped()))
    if args.write:
        SHAPES_FILE.write_text(text)
        print(f"wrote {SHAPES_FILE}")
    elif args.check:
        if not SHAPES_FILE.exists() or SHAPES_FILE.read_text() != text:
            print(f"{SHAPES_FILE} is out of date: run `make shapes`", file=sys.stderr)
            return 1
        print(f"{SHAPES_FILE} is up to date")
    else:
        sys.stdout.write(text)
    return 0
