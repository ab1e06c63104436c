"""A dataset row has a size bound: one 100 MB row took the trainer of a tiny model to 16.5 GB of
RSS. Rows over max(1 MiB, 64 bytes x dataset.maxSeqLength) are skipped and counted like
malformed rows, found without holding the long line in memory; a dataset of nothing but such
rows is the usual no-usable-rows config error. The numbers below are worked by hand."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import DatasetSpec
from lora_trainer.data import RowReport, load_examples, read_rows, row_limit_bytes, text_bytes
from lora_trainer.errors import InvalidConfigError
from lora_trainer.model import load_tokenizer

MIB = 1024 * 1024
GOOD = {"prompt": "Q: a\nA:", "completion": " lime"}


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return load_tokenizer(model_dir)


def spec(max_seq_length: int = 64) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"source": "/d.jsonl", "format": "prompt-completion", "maxSeqLength": max_seq_length}
    )


def reason(size: int, limit: int) -> str:
    return (
        f"row too large: {size} bytes, above the limit of {limit} bytes "
        "(64 bytes per token of dataset.maxSeqLength, at least 1048576)"
    )


def test_the_limit_is_64_bytes_a_token_and_at_least_one_mib() -> None:
    assert row_limit_bytes(64) == 1_048_576  # 64 x 64 = 4096, below the 1 MiB floor
    assert row_limit_bytes(16_384) == 1_048_576  # 64 x 16384 = 1048576 exactly
    assert row_limit_bytes(16_385) == 1_048_640  # 64 x 16385
    assert row_limit_bytes(131_072) == 8_388_608  # 64 x 128k: 8 MiB


def test_an_oversized_row_is_skipped_and_counted(tokenizer: Any, tmp_path: Path) -> None:
    huge = {"prompt": "Q: b\nA:", "completion": " lime" * (MIB // 5 * 3)}  # ~3 MiB
    huge_line = json.dumps(huge)
    size = len(huge_line.encode())
    assert size == 3_145_765  # 40 bytes of JSON around 629145 x " lime" (5 bytes each)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), huge_line, json.dumps(GOOD), "oops"]) + "\n")
    expected = (
        "dataset.source d: 2 of 4 rows usable; 2 bad rows skipped "
        f"(first: row 2: {reason(size, MIB)}); 1 of them over the row size limit"
    )
    with pytest.warns(UserWarning) as caught:
        examples = load_examples(path, "dataset.source d", spec(), tokenizer)
    assert [str(w.message) for w in caught] == [expected]
    assert len(examples) == 2


def test_only_oversized_rows_is_the_no_usable_rows_error(tokenizer: Any, tmp_path: Path) -> None:
    line = json.dumps({"prompt": "Q", "completion": "x" * (2 * MIB)})  # 2 MiB + 33 bytes
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n" + line)  # the last line has no newline: the same size
    with pytest.raises(InvalidConfigError) as info:
        load_examples(path, "dataset.source d", spec(), tokenizer)
    assert info.value.message == (
        "dataset.source d: no usable rows for format prompt-completion: 2 of 2 rows are bad "
        f"(first: row 1: {reason(2 * MIB + 33, MIB)})"
    )


def test_the_bound_is_exact_at_the_byte(tmp_path: Path) -> None:
    """A line of exactly `limit` bytes is read; one byte more is not (newline not counted)."""
    at = json.dumps({"prompt": "p", "completion": "c" * 67})  # 33 bytes of JSON + 67
    over = json.dumps({"prompt": "p", "completion": "c" * 68})  # 101 bytes
    assert (len(at), len(over)) == (100, 101)
    path = tmp_path / "d.jsonl"
    path.write_text(f"{at}\n{over}\n\n{at}\r\n{over}")
    report = RowReport("d")
    rows = read_rows(path, "d", report, 100)
    assert [number for number, _ in rows] == [1, 4]
    assert rows[0][1] == json.loads(at)
    assert (report.total, report.bad, report.reasons) == (4, 2, {"row too large": 2})
    assert report.first_bad is not None and report.first_bad[0] == 2
    assert report.first_bad[1].startswith("row too large: 101 bytes, above the limit of 100 ")


def test_a_long_line_is_never_held_in_memory(tmp_path: Path) -> None:
    """40 MiB on one line: reading stays within a few MiB (a 1 MiB limit, 1 MiB chunks; the
    old reader took the whole line, then json.loads and the tokenizer copies of it)."""
    path = tmp_path / "d.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps(GOOD) + "\n")
        fh.write('{"prompt": "Q", "completion": "')
        for _ in range(40):
            fh.write("y" * MIB)
        fh.write('"}\n')
        fh.write(json.dumps(GOOD) + "\n")
    report = RowReport("d")
    tracemalloc.start()
    try:
        rows = read_rows(path, "d", report, MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [number for number, _ in rows] == [1, 3]
    assert report.reasons == {"row too large": 1}
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while reading"


def test_parquet_rows_are_bounded_by_their_text(tokenizer: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    big = {"prompt": "Q: é\nA:", "completion": "é" * (MIB // 2 + 1)}  # 2 bytes each in UTF-8
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, big, GOOD]), path)
    size = len("Q: é\nA:".encode()) + 2 * (MIB // 2 + 1)  # 8 + 1048578
    with pytest.warns(UserWarning, match=r"2 of 3 rows usable; 1 bad rows skipped") as caught:
        examples = load_examples(path, "d", spec(), tokenizer)
    assert len(examples) == 2
    assert f"(first: row 2: {reason(size, MIB)})" in str(caught[0].message)


def test_text_bytes_counts_nested_strings_only() -> None:
    row = {"messages": [{"role": "user", "content": "héllo"}], "n": 5, "ok": True}
    assert text_bytes(row) == 4 + 6  # "user" + "héllo" (é is 2 bytes); numbers count 0


def test_a_deeply_nested_row_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    """100 KB of `[` fits under the row limit but was a RecursionError out of json.loads."""
    path = tmp_path / "d.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n{'[' * 100_000}{']' * 100_000}\n{json.dumps(GOOD)}\n")
    report = RowReport("d")
    rows = read_rows(path, "d", report, MIB)
    assert [number for number, _ in rows] == [1, 3]
    assert (report.total, report.bad, report.reasons) == (3, 1, {"invalid JSON": 1})
    assert report.first_bad is not None
    assert report.first_bad == (
        2,
        "invalid JSON: nested more than 64 levels deep (100000 levels); nothing real nests so deep",
    )
