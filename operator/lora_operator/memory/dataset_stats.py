"""Rows and mean tokens of a JSONL dataset `lorajob plan` can read on the user's machine
(`file://` or an absolute path that exists here), for the time forecast.

No tokenizer is loaded (that would need the model's files and seconds of import): a row's
tokens are estimated as its text characters / 4, the usual figure for English text under
BPE tokenizers, plus a few tokens of chat-template markup per message, and cut at
`maxSeqLength` as the trainer cuts. Only the first rows are measured for the mean; all lines
are counted. Anything unreadable gives None and the forecast falls back to numExamples.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from lora_contract.bounded_parse import load_json

from .forecast import DatasetStats

CHARS_PER_TOKEN = 4.0
TEMPLATE_TOKENS_PER_MESSAGE = 4
SAMPLE_ROWS = 2000


def local_path(source: str) -> Path | None:
    """The local file a dataset URI names, when it is one and exists here."""
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://") or "/")
    elif source.startswith("/"):
        path = Path(source)
    else:
        return None
    return path if path.is_file() else None


def row_tokens(row: Any) -> float:
    """Estimated tokens of one JSON row: its strings' characters / 4, plus message markup."""
    if isinstance(row, str):
        return len(row) / CHARS_PER_TOKEN
    if isinstance(row, dict):
        extra = TEMPLATE_TOKENS_PER_MESSAGE if "role" in row else 0
        return extra + sum(row_tokens(value) for value in row.values())
    if isinstance(row, list):
        return sum(row_tokens(value) for value in row)
    return 0.0


def read_dataset_stats(source: str, max_seq_length: int) -> DatasetStats | None:
    """Row count and mean (cut) tokens of a local JSONL file; None if not readable as one."""
    path = local_path(source)
    if path is None or path.suffix.lower() not in (".jsonl", ".json"):
        return None
    try:
        with path.open(encoding="utf-8") as lines:
            first = islice(lines, SAMPLE_ROWS)
            sample = [load_json(line, source) for line in first if line.strip()]
        with path.open("rb") as raw:
            rows = sum(1 for line in raw if line.strip())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON or nested too deep
        return None
    if not sample:
        return None
    mean = sum(min(row_tokens(row), max_seq_length) for row in sample) / len(sample)
    return DatasetStats(rows=rows, mean_tokens=max(mean, 1.0), source="~characters/4")
