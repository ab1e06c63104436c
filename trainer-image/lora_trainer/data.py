"""Rows (JSONL/Parquet) -> tokenized examples with loss only on the completion / assistant turns.

Bad rows are skipped and counted (the first bad row's number and reason are reported); a dataset
with no usable row is a config error. Labels are -100 on prompt tokens so the loss (and the
gradient) come only from what the model should learn to produce.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lora_contract.bounded_parse import TooDeepError, load_json
from lora_contract.types import DatasetFormat, DatasetSpec

from .errors import InvalidConfigError

IGNORE_INDEX = -100
OVERSIZED = "row too large"  # the reason (and its count's key) of a row over the size limit
Example = dict[str, list[int]]


class BadRow(ValueError):
    """Why a row cannot be used (missing field, wrong type, ...)."""


@dataclass
class RowReport:
    """How many rows were usable, skipped, or cut, for the warning and the run's log."""

    source: str
    total: int = 0
    used: int = 0
    bad: int = 0
    first_bad: tuple[int, str] | None = None
    truncated: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def record_bad(self, row_number: int, reason: str) -> None:
        self.bad += 1
        self.reasons[reason.split(":")[0]] = self.reasons.get(reason.split(":")[0], 0) + 1
        if self.first_bad is None or row_number < self.first_bad[0]:
            self.first_bad = (row_number, reason)

    def first_bad_note(self) -> str:
        """` (first: row N: reason)` for a no-usable-rows error; empty without bad rows."""
        if self.first_bad is None:
            return ""
        return f" (first: row {self.first_bad[0]}: {self.first_bad[1]})"

    def announce(self) -> None:
        """Warn when rows were skipped or cut, and log the summary either way."""
        if self.bad or self.truncated:
            warnings.warn(self.summary(), stacklevel=3)
        print(f"[lora-trainer] data {self.summary()}", flush=True)

    def summary(self) -> str:
        text = f"{self.source}: {self.used} of {self.total} rows usable"
        if self.first_bad:
            number, reason = self.first_bad
            text += f"; {self.bad} bad rows skipped (first: row {number}: {reason})"
        if self.reasons.get(OVERSIZED):
            text += f"; {self.reasons[OVERSIZED]} of them over the row size limit"
        if self.truncated:
            text += f"; {self.truncated} rows truncated to maxSeqLength"
        return text


# ------------------------------------------------------------------------------- reading

# A row's size bound: one 100 MB row took the trainer of a tiny model to 16.5 GB of RSS while
# tokenizing, though only maxSeqLength tokens of it are ever trained on. A token is 3-5 bytes of
# text on average and rarely more than 16; JSON escapes (\uXXXX) take up to 6 bytes a character.
# 64 bytes per token of maxSeqLength (at least 1 MiB) is generous to every real row and still
# keeps the tokenizer's memory bounded; larger rows are skipped and counted as bad rows.
ROW_BYTES_PER_TOKEN = 64
MIN_ROW_LIMIT_BYTES = 1024 * 1024
_SKIP_CHUNK = 1024 * 1024


def row_limit_bytes(max_seq_length: int) -> int:
    """Most bytes one row may have: its JSONL line, or the text of its Parquet fields."""
    return max(MIN_ROW_LIMIT_BYTES, ROW_BYTES_PER_TOKEN * max_seq_length)


def oversized(size: int, limit: int) -> str:
    return (
        f"{OVERSIZED}: {size} bytes, above the limit of {limit} bytes "
        f"({ROW_BYTES_PER_TOKEN} bytes per token of dataset.maxSeqLength, at least "
        f"{MIN_ROW_LIMIT_BYTES})"
    )


def _lines(fh: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, the line or None when it is longer than `limit`, its length without the
    line end): a line is read only up to `limit` + 2 bytes, the rest of an oversized one is
    skipped in chunks, so a 100 MB line never sits in memory."""
    number = 0
    while line := fh.readline(limit + 2):  # the text and its line end ("\n" or "\r\n")
        number += 1
        ended = line.endswith(b"\n")
        size = len(line) - len(_line_end(line))
        if size <= limit:
            yield number, line, size
            continue
        while not ended and (rest := fh.readline(_SKIP_CHUNK)):
            ended = rest.endswith(b"\n")
            size += len(rest) - len(_line_end(rest))
        yield number, None, size


def _line_end(line: bytes) -> bytes:
    for end in (b"\r\n", b"\n"):
        if line.endswith(end):
            return end
    return b""


def read_rows(
    path: Path, source: str, report: RowReport, limit: int = MIN_ROW_LIMIT_BYTES
) -> list[tuple[int, Any]]:
    """(row number, parsed row) pairs; unparsable JSONL lines and rows over `limit` bytes
    count as bad rows."""
    if not path.exists():
        raise InvalidConfigError(f"{source}: file not found ({path})")
    if path.suffix == ".parquet":
        return _read_parquet(path, source, report, limit)
    rows = []
    with path.open("rb") as fh:
        for number, raw, size in _lines(fh, limit):
            if raw is None:
                report.total += 1
                report.record_bad(number, oversized(size, limit))
                continue
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            report.total += 1
            try:
                rows.append((number, load_json(line, f"line {number}")))
            except json.JSONDecodeError as exc:
                report.record_bad(number, f"invalid JSON: {exc.msg}")
            except TooDeepError as exc:  # json.loads of [[[...]]] is a RecursionError
                report.record_bad(number, f"invalid JSON: {exc.problem}")
    return rows


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string in a row (nested lists and objects too: chat messages)."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, dict):
        return sum(text_bytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_bytes(v) for v in value)
    return 0


def _read_parquet(
    path: Path, source: str, report: RowReport, limit: int = MIN_ROW_LIMIT_BYTES
) -> list[tuple[int, Any]]:
    """Row groups one batch at a time; a row whose text is over `limit` bytes is counted bad
    before it is tokenized (Parquet stores a cell whole, so it is read, but not kept)."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    rows: list[tuple[int, Any]] = []
    number = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                size = text_bytes(row)
                if size > limit:
                    report.record_bad(number, oversized(size, limit))
                else:
                    rows.append((number, row))
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise InvalidConfigError(f"{source}: not a readable Parquet file: {exc}") from None
    report.total = number
    return rows


# ----------------------------------------------------------------------------- formatting


def _text(row: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in row:
        raise BadRow(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string (got {type(value).__name__})")
    if not allow_empty and not value.strip():
        raise BadRow(f"field {name!r} is empty")
    return value


def instruction_prompt(instruction: str, input_text: str) -> str:
    """Alpaca-style prompt; the input section is left out when the row has none."""
    if input_text.strip():
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


class Tokenize:
    """Row -> Example for one format, with the spec's field mapping applied."""

    def __init__(self, spec: DatasetSpec, tokenizer: Any) -> None:
        self.spec = spec
        self.tok = tokenizer
        fields = spec.fields
        self.names = {
            "prompt": (fields and fields.prompt) or "prompt",
            "completion": (fields and fields.completion) or "completion",
            "messages": (fields and fields.messages) or "messages",
            "instruction": (fields and fields.instruction) or "instruction",
            "input": (fields and fields.input) or "input",
            "output": (fields and fields.output) or "output",
        }
        self.handlers: dict[DatasetFormat, Callable[[dict[str, Any]], Example]] = {
            DatasetFormat.prompt_completion: self._prompt_completion,
            DatasetFormat.instruction: self._instruction,
            DatasetFormat.chat: self._chat,
        }

    def __call__(self, row: Any) -> Example:
        if not isinstance(row, dict):
            raise BadRow(f"expected a JSON object (got {type(row).__name__})")
        return self.handlers[self.spec.format](row)

    def _ids(self, text: str, special: bool) -> list[int]:
        ids: list[int] = self.tok(text, add_special_tokens=special)["input_ids"]
        return ids

    def _pair(self, prompt: str, completion: str) -> Example:
        prompt_ids = self._ids(prompt, special=True)
        completion_ids = self._ids(completion, special=False)
        if self.tok.eos_token_id is not None:
            completion_ids.append(self.tok.eos_token_id)
        return {
            "input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        }

    def _prompt_completion(self, row: dict[str, Any]) -> Example:
        n = self.names
        return self._pair(_text(row, n["prompt"]), _text(row, n["completion"]))

    def _instruction(self, row: dict[str, Any]) -> Example:
        n = self.names
        input_text = _text(row, n["input"], allow_empty=True) if n["input"] in row else ""
        prompt = instruction_prompt(_text(row, n["instruction"]), input_text)
        return self._pair(prompt, _text(row, n["output"]))

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        text = self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return self._ids(str(text), special=False)

    def _chat(self, row: dict[str, Any]) -> Example:
        messages = row.get(self.names["messages"])
        if not isinstance(messages, list) or not messages:
            raise BadRow(f"field {self.names['messages']!r} must be a non-empty list of messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise BadRow(f"message {i} must be an object with a string 'content'")
            if message.get("role") not in ("system", "user", "assistant", "tool"):
                raise BadRow(f"message {i} has role {message.get('role')!r}")
        if not any(m["role"] == "assistant" for m in messages):
            raise BadRow("no assistant message to learn from")
        if self.tok.chat_template is None:
            raise InvalidConfigError(
                "dataset.format chat needs a tokenizer with a chat template; this base model "
                "has none (use prompt-completion or instruction)"
            )
        input_ids: list[int] = []
        labels: list[int] = []
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                head = self._render(messages[:i], generation_prompt=True)
                input_ids, labels = _extend(input_ids, labels, head, learn=False)
            full = self._render(messages[: i + 1], generation_prompt=False)
            input_ids, labels = _extend(
                input_ids, labels, full, learn=message["role"] == "assistant"
            )
        return {"input_ids": input_ids, "labels": labels}


def _extend(
    ids: list[int], labels: list[int], rendered: list[int], learn: bool
) -> tuple[list[int], list[int]]:
    """Append the tokens `rendered` adds after the common prefix with `ids` (chat templates are
    prefix-stable in practice; if not, the differing tail is re-labelled)."""
    common = 0
    while common < min(len(ids), len(rendered)) and ids[common] == rendered[common]:
        common += 1
    new = rendered[common:]
    return rendered, labels[:common] + (list(new) if learn else [IGNORE_INDEX] * len(new))


# ------------------------------------------------------------------------------- pipeline


def tokenize_rows(
    rows: list[tuple[int, Any]], tokenize: Tokenize, max_len: int, report: RowReport
) -> list[Example]:
    examples = []
    for number, row in rows:
        try:
            example = tokenize(row)
        except BadRow as exc:
            report.record_bad(number, str(exc))
            continue
        if len(example["input_ids"]) > max_len:
            report.truncated += 1
            example = {k: v[:max_len] for k, v in example.items()}
        if all(label == IGNORE_INDEX for label in example["labels"]):
            report.record_bad(number, f"no completion tokens within maxSeqLength {max_len}")
            continue
        examples.append(example)
    report.used = len(examples)
    return examples


def pack(examples: Sequence[Example], max_len: int) -> list[Example]:
    """Greedily concatenate consecutive examples into sequences of at most `max_len` tokens."""
    packed: list[Example] = []
    current: Example = {"input_ids": [], "labels": []}
    for example in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(example["input_ids"]) > max_len:
            packed.append(current)
            current = {"input_ids": [], "labels": []}
        current["input_ids"] = current["input_ids"] + example["input_ids"]
        current["labels"] = current["labels"] + example["labels"]
    if current["input_ids"]:
        packed.append(current)
    return packed


def split_eval(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Seeded hold-out: the same rows go to eval on every attempt, so resume sees the same split."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


def load_examples(path: Path, source: str, spec: DatasetSpec, tokenizer: Any) -> list[Example]:
    report = RowReport(source)
    rows = read_rows(path, source, report, row_limit_bytes(spec.max_seq_length))
    if not rows and report.total == 0 and not report.bad:
        raise InvalidConfigError(f"{source}: the dataset is empty (no rows)")
    examples = tokenize_rows(rows, Tokenize(spec, tokenizer), spec.max_seq_length, report)
    if not examples:
        first = report.first_bad_note()
        hint = ""
        if path.suffix not in (".jsonl", ".json", ".ndjson", ".parquet"):
            hint = "; the file is read as JSONL (one JSON object per line), Parquet needs .parquet"
        raise InvalidConfigError(
            f"{source}: no usable rows for format {spec.format.value}: "
            f"{report.bad} of {report.total} rows are bad{first}{hint}"
        )
    report.announce()
    return examples


class ListDataset:
    """A map-style dataset over prepared examples (what the HF Trainer's sampler indexes)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)


class PadCollator:
    """Right-pad a batch; pad labels with -100 so padding never contributes to the loss."""

    def __init__(self, pad_id: int, multiple_of: int = 8) -> None:
        self.pad_id = pad_id
        self.multiple_of = multiple_of

    def __call__(self, batch: list[Example]) -> dict[str, Any]:
        import torch

        longest = max(len(e["input_ids"]) for e in batch)
        width = -(-longest // self.multiple_of) * self.multiple_of
        ids, labels, mask = [], [], []
        for example in batch:
            pad = width - len(example["input_ids"])
            ids.append(example["input_ids"] + [self.pad_id] * pad)
            labels.append(example["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(example["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
