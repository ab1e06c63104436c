"""The adapter syncer of a shared server (docs/serving.md, option c): keeps vLLM's filesystem
resolver directory equal to the registry. It reads the registry ConfigMap as mounted (kubelet
keeps the files current), downloads each listed adapter from S3 into `<dir>/<adapter>/`, rewrites
its `adapter_config.json` so that vLLM's resolver accepts it (`base_model_name_or_path` = the
served model name; `peft_type` must be LORA), and removes folders no longer listed. Level-based:
a restarted pod starts with an empty directory and rebuilds it from the registry; no call to the
operator or to vLLM. Run as `python -m lora_trainer.adapter_sync --registry DIR --dir DIR`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_contract.adapter_registry import ENTRY_PREFIX, SERVER_DATA_KEY, Entry
from lora_contract.layout import S3Location
from lora_contract.storage import S3Store, StorageError

SOURCE_MARKER = ".lora-source"  # the URI a folder was synced from (a new URI replaces it)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Registry:
    served_model: str
    adapters: dict[str, str]  # adapter name -> URI


def read_registry(registry_dir: Path) -> Registry:
    """The registry as mounted. Files kubelet adds (`..data`) and entries that do not parse are
    skipped; of two entries with one adapter name the first by file name wins (the operator
    refuses the second, this only keeps a hand-edited registry from flapping)."""
    server = json.loads((registry_dir / SERVER_DATA_KEY).read_text())
    adapters: dict[str, str] = {}
    for path in sorted(registry_dir.glob(f"{ENTRY_PREFIX}*")):
        entry = Entry.from_data(path.read_text())
        if entry is not None and entry.adapter not in adapters:
            adapters[entry.adapter] = entry.uri
    return Registry(str(server["baseModel"]), adapters)


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # adapter -> why


def _accept(folder: Path, served_model: str) -> None:
    """Make `folder` loadable by vLLM's resolver, or raise ValueError saying why it cannot be."""
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ValueError(f"no {ADAPTER_CONFIG} under the adapter URI")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"peft_type is {config.get('peft_type')!r}, vLLM loads only LORA")
    config["base_model_name_or_path"] = served_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def sync_once(store: S3Store, registry_dir: Path, adapter_dir: Path) -> SyncResult:
    """One pass: download what is listed and missing (or listed under a new URI), remove what is
    no longer listed. A folder appears whole (downloaded beside it, then renamed)."""
    registry = read_registry(registry_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    result = SyncResult()
    for name, uri in sorted(registry.adapters.items()):
        target = adapter_dir / name
        marker = target / SOURCE_MARKER
        if marker.is_file() and marker.read_text() == uri:
            continue
        staging = adapter_dir / f".staging-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            store.download_prefix(S3Location.parse(uri), staging)
            _accept(staging, registry.served_model)
        except (StorageError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            result.failed[name] = str(exc)
            continue
        (staging / SOURCE_MARKER).write_text(uri)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        result.added.append(name)
    for folder in sorted(adapter_dir.iterdir()):
        if folder.is_dir() and folder.name not in registry.adapters:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.name.startswith("."):
                result.removed.append(folder.name)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adapter_sync", description=__doc__)
    parser.add_argument("--registry", type=Path, required=True, help="the mounted registry")
    parser.add_argument("--dir", type=Path, required=True, help="vLLM's resolver directory")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between passes")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    store = S3Store.from_env()
    while True:
        result = sync_once(store, args.registry, args.dir)
        for name in result.added:
            print(f"adapter_sync: added {name}", flush=True)
        for name in result.removed:
            print(f"adapter_sync: removed {name}", flush=True)
        for name, why in result.failed.items():
            print(f"adapter_sync: cannot serve {name}: {why}", file=sys.stderr, flush=True)
        if args.once:
            return 1 if result.failed else 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
