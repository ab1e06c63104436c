"""`python -m lora_trainer.export`: the merged model of a finished run (spec.export.merged).

Loads the base model in the export dtype, applies the run's final/ adapter with PEFT, folds it
into the weights (`merge_and_unload`) and writes sharded safetensors, config and tokenizer under
the run's merged/ folder, with a MANIFEST.json of sizes and sha256 checksums written last (the
commit point, as for checkpoints). The result loads with transformers alone, no PEFT.

Runs in its own CPU Job after the training Job succeeded (operator: controller/export_job.py).
A failure here never touches progress.json: the run stays Succeeded; the operator reads the Job's
termination message into the Exported condition.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from lora_contract.layout import FINAL_DIR, MANIFEST, MERGED_DIR, S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_TRANSIENT
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import ExportDtype, TrainerConfig

from .config import config_path, load_trainer_config, work_dir
from .errors import TrainerError, TransientError
from .main import write_termination_message
from .model import torch_dtype

SHA_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(SHA_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def merge(base: str, adapter: Path, dtype: ExportDtype, out: Path, max_shard_size: str) -> None:
    """base + adapter, merged, into `out` (safetensors shards, config, tokenizer)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .model import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), max_shard_size=max_shard_size, safe_serialization=True)
    load_tokenizer(base).save_pretrained(str(out))


def manifest_of(folder: Path, dtype: ExportDtype, adapter_uri: str) -> dict[str, Any]:
    """Every file's size and sha256: what a reader checks after downloading merged/."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = {p.relative_to(folder).as_posix(): p for p in files}
    return {
        "kind": "merged",
        "dtype": dtype.value,
        "adapter": adapter_uri,
        "files": {name: path.stat().st_size for name, path in names.items()},
        "sha256": {name: sha256_of(path) for name, path in names.items()},
        "totalBytes": sum(path.stat().st_size for path in files),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def export_merged(config: TrainerConfig, store: S3Store, scratch: Path) -> S3Location:
    """The run's merged/ folder, written from its final/ adapter; returns where it is."""
    from .train import model_path

    run = S3Location.parse(config.output_uri)
    final, dest = run.child(FINAL_DIR), run.child(MERGED_DIR)
    export = config.spec.export
    adapter, out = scratch / "adapter", scratch / "merged"
    for folder in (adapter, out):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        if not store.exists(final.child(MANIFEST)):
            raise TransientError(f"no finished adapter at {final.uri} (its MANIFEST.json)")
        store.download_prefix(final, adapter)
        base = model_path(config, store, scratch)
        merge(base, adapter, export.dtype, out, export.max_shard_size)
        manifest = manifest_of(out, export.dtype, final.uri)
        store.delete_prefix(dest)  # a previous attempt's shards would mix with these
        store.upload_dir(dest, out)
        store.put_json(dest.child(MANIFEST), manifest)  # last: the commit point
    except StorageError as exc:
        raise TransientError(f"merged export to {dest.uri} failed: {exc}") from None
    return dest


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_trainer_config(config_path(argv[0] if argv else None))
        store = S3Store.from_env(config.spec.output.endpoint)
        dest = export_merged(config, store, work_dir(config) / "export")
    except TrainerError as exc:
        message = f"export: {exc.message}"
        code = exc.exit_code
    except StorageError as exc:
        message, code = f"export: output bucket is not usable: {exc}", EXIT_TRANSIENT
    except (OSError, ValueError) as exc:
        message, code = f"export: {type(exc).__name__}: {exc}", EXIT_INVALID_CONFIG
    else:
        print(f"[lora-trainer] merged model at {dest.uri}", flush=True)
        return EXIT_OK
    print(f"lora-trainer: error: {message}", file=sys.stderr, flush=True)
    write_termination_message(message)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
