"""The adapter syncer of a shared server (docs/serving.md, option c): keeps vLLM's filesystem
resolver directory equal to the registry. It reads the registry ConfigMap as mounted (kubelet
keeps the files current), downloads each listed adapter from S3 into `<dir>/<adapter>/`, rewrites
its `adapter_config.json` so that vLLM's resolver accepts it (`base_model_name_or_path` = the
served model name; `peft_type` must be LORA), and removes folders no longer listed. Level-based:
a restarted pod starts with an empty directory and rebuilds it from the registry; no call to the
operator or to vLLM. Run as `python -m lora_trainer.adapter_sync --registry DIR --dir DIR
[--credentials DIR]`.

Credentials: with `--credentials DIR` (a shared server: one read-only Secret volume per listed
Secret at `DIR/<secret>/`), each entry is downloaded with the keys of the Secret it names, read
from the key files its entry records (the job's `accessKeyKey`/`secretKeyKey`), from the S3
endpoint and region it records (its job's store, when not the server's) or else the env's
(S3_ENDPOINT, AWS_REGION: the server's); an entry whose Secret is not mounted, or that names
none, is reported and never downloaded with another team's keys. Without it, one store from the
env (AWS_ACCESS_KEY_ID, ..., S3_ENDPOINT) for every entry, as before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_contract import pod
from lora_contract.adapter_registry import ENTRY_PREFIX, SERVER_DATA_KEY, Entry
from lora_contract.layout import S3Location
from lora_contract.storage import S3Store, StorageError

SOURCE_MARKER = ".lora-source"  # the URI a folder was synced from (a new URI replaces it)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Registry:
    served_model: str
    adapters: dict[str, str]  # adapter name -> URI
    entries: dict[str, Entry] = field(default_factory=dict)  # adapter name -> its entry


def read_registry(registry_dir: Path) -> Registry:
    """The registry as mounted. Files kubelet adds (`..data`) and entries that do not parse are
    skipped; of two entries with one adapter name the first by file name wins (the operator
    refuses the second, this only keeps a hand-edited registry from flapping)."""
    server = json.loads((registry_dir / SERVER_DATA_KEY).read_text())
    listed: dict[str, Entry] = {}
    for path in sorted(registry_dir.glob(f"{ENTRY_PREFIX}*")):
        entry = Entry.from_data(path.read_text())
        if entry is not None and entry.adapter not in listed:
            listed[entry.adapter] = entry
    adapters = {name: entry.uri for name, entry in listed.items()}
    return Registry(str(server["baseModel"]), adapters, listed)


# The store an entry is downloaded with; raises CredentialsError when it has none.
StoreFor = Callable[[Entry], S3Store]
# Builds a store from (endpoint, access key, secret key, region): S3Store, or a test's recorder.
StoreFactory = Callable[[str, str, str, str | None], S3Store]


class CredentialsError(ValueError):
    """An entry the syncer has no keys for (reported as failed, never downloaded)."""


def entry_store_location(
    entry: Entry, endpoint: str | None, region: str | None
) -> tuple[str, str | None]:
    """Where `entry`'s adapter is: its own endpoint and region when it records them (its job
    writes to another store than the server's), else the env's (`endpoint`, `region`)."""
    if entry.endpoint is not None:
        return entry.endpoint, entry.region
    if not endpoint:
        raise CredentialsError(
            f"its entry names no S3 endpoint and env {pod.ENV_S3_ENDPOINT} is not set"
        )
    return endpoint, region


def credentials_stores(
    directory: Path, endpoint: str | None, region: str | None, make: StoreFactory = S3Store
) -> StoreFor:
    """Each entry's store: its own endpoint/region (`entry_store_location`) with the keys of the
    Secret it names, as mounted under `directory/<secret>/<key>`; one store per location, Secret
    and key names (main calls it once per pass, so a rotated key is read at the next)."""
    made: dict[tuple[str, str | None, str, str, str], S3Store] = {}

    def store_for(entry: Entry) -> S3Store:
        if entry.secret is None:
            raise CredentialsError("its entry names no credentials Secret")
        folder = directory / entry.secret
        if not folder.is_dir():
            raise CredentialsError(f"credentials Secret {entry.secret} is not mounted at {folder}")
        where = entry_store_location(entry, endpoint, region)
        which = (*where, entry.secret, entry.access_key_key, entry.secret_key_key)
        if which not in made:
            keys = []
            for key in which[3:]:
                path = folder / key
                if not path.is_file():
                    raise CredentialsError(f"credentials Secret {entry.secret} has no key {key}")
                keys.append(path.read_text())
            made[which] = make(where[0], keys[0], keys[1], where[1])
        return made[which]

    return store_for


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


def sync_once(store: S3Store | StoreFor, registry_dir: Path, adapter_dir: Path) -> SyncResult:
    """One pass: download what is listed and missing (or listed under a new URI), remove what is
    no longer listed. A folder appears whole (downloaded beside it, then renamed). `store`: one
    store for every entry, or each entry's own (`credentials_stores`)."""
    registry = read_registry(registry_dir)
    store_for: StoreFor = (lambda _: store) if isinstance(store, S3Store) else store
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
            store_for(registry.entries[name]).download_prefix(S3Location.parse(uri), staging)
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
    parser.add_argument(
        "--credentials",
        type=Path,
        default=None,
        help="mounted credentials Secrets, one folder each: each entry uses its own Secret's "
        "keys (default: one set of keys from the env)",
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between passes")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    single = S3Store.from_env() if args.credentials is None else None
    # the server's store (server.json, as the trainer gets it), for entries naming none
    endpoint = os.environ.get(pod.ENV_S3_ENDPOINT) or None
    region = os.environ.get(pod.ENV_AWS_REGION) or None
    while True:
        # per-entry stores anew each pass: a rotated Secret's keys are read at the next one
        store: S3Store | StoreFor = (
            credentials_stores(args.credentials, endpoint, region) if single is None else single
        )
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
