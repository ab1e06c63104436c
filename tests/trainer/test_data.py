"""Formats, field mapping, completion-only labels, bad rows, packing and the eval split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import DatasetSpec
from lora_trainer.data import (
    IGNORE_INDEX,
    PadCollator,
    Tokenize,
    load_examples,
    pack,
    split_eval,
)
from lora_trainer.errors import InvalidConfigError
from lora_trainer.model import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return load_tokenizer(model_dir)


def dataset(fmt: str, **extra: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": "/d.jsonl", "format": fmt, **extra})


def learned_text(tokenizer: Any, example: dict[str, list[int]]) -> str:
    ids = [
        t
        for t, label in zip(example["input_ids"], example["labels"], strict=True)
        if label != IGNORE_INDEX
    ]
    return str(tokenizer.decode(ids))


def test_prompt_completion_learns_only_the_completion(tokenizer: Any) -> None:
    example = Tokenize(dataset("prompt-completion"), tokenizer)(
        {"prompt": "Q: Which fruit goes with red?\nA:", "completion": " The red fruit is apple."}
    )
    assert learned_text(tokenizer, example) == " The red fruit is apple.</s>"
    assert example["labels"][0] == IGNORE_INDEX
    assert len(example["input_ids"]) == len(example["labels"])


def test_field_mapping(tokenizer: Any) -> None:
    spec = dataset("prompt-completion", fields={"prompt": "question", "completion": "answer"})
    example = Tokenize(spec, tokenizer)({"question": "Q: x\nA:", "answer": " lime"})
    assert learned_text(tokenizer, example) == " lime</s>"


def test_instruction_format(tokenizer: Any) -> None:
    tok = Tokenize(dataset("instruction"), tokenizer)
    with_input = tok(
        {"instruction": "Reverse the words.", "input": "alpha beta", "output": "beta alpha"}
    )
    text = tokenizer.decode(with_input["input_ids"])
    assert "### Input:\nalpha beta" in text
    assert learned_text(tokenizer, with_input) == "beta alpha</s>"
    without = tok({"instruction": "Say lime.", "output": "lime"})
    assert "### Input" not in tokenizer.decode(without["input_ids"])


def test_chat_learns_only_assistant_turns(tokenizer: Any) -> None:
    example = Tokenize(dataset("chat"), tokenizer)(
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Reverse: alpha beta"},
                {"role": "assistant", "content": "beta alpha"},
                {"role": "user", "content": "Which fruit goes with red?"},
                {"role": "assistant", "content": "apple"},
            ]
        }
    )
    learned = learned_text(tokenizer, example)
    assert "beta alpha</s>" in learned and "apple</s>" in learned
    assert "Reverse" not in learned and "system" not in learned and "<|user|>" not in learned


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "x"}, "missing field 'completion'"),
        ({"prompt": 1, "completion": "y"}, "field 'prompt' must be a string"),
        ({"prompt": "x", "completion": "  "}, "field 'completion' is empty"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_bad_prompt_completion_rows(tokenizer: Any, row: Any, reason: str) -> None:
    from lora_trainer.data import BadRow

    with pytest.raises(BadRow, match=reason):
        Tokenize(dataset("prompt-completion"), tokenizer)(row)


def test_bad_chat_rows(tokenizer: Any) -> None:
    from lora_trainer.data import BadRow

    tok = Tokenize(dataset("chat"), tokenizer)
    with pytest.raises(BadRow, match="no assistant message"):
        tok({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(BadRow, match="role 'robot'"):
        tok({"messages": [{"role": "robot", "content": "hi"}]})
    with pytest.raises(BadRow, match="non-empty list"):
        tok({"messages": []})


def test_load_counts_bad_rows_and_truncates(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "Q: a\nA:", "completion": " lime"}] * 3
    long_row = {"prompt": "Q: x\nA:", "completion": " alpha" * 100}
    lines = [json.dumps(r) for r in rows] + ["oops", json.dumps(long_row)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"4 of 5 rows usable; 1 bad rows skipped \(first: row 4"):
        examples = load_examples(
            path, "dataset.source d", dataset("prompt-completion", maxSeqLength=16), tokenizer
        )
    assert len(examples) == 4
    assert max(len(e["input_ids"]) for e in examples) == 16


def test_prompt_longer_than_max_len_is_a_bad_row(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "alpha " * 50, "completion": " lime"}) + "\n")
    with pytest.raises(InvalidConfigError, match="no completion tokens within maxSeqLength 16"):
        load_examples(path, "d", dataset("prompt-completion", maxSeqLength=16), tokenizer)


def test_csv_file_gets_a_format_hint(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nQ: a,lime\n")
    with pytest.raises(InvalidConfigError, match=r"2 of 2 rows are bad.*read as JSONL"):
        load_examples(path, "d", dataset("prompt-completion"), tokenizer)


def test_parquet_source(tokenizer: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q: a\nA:", "completion": " lime"}] * 4), path)
    assert len(load_examples(path, "d", dataset("prompt-completion"), tokenizer)) == 4


def test_pack_split_and_collate() -> None:
    examples = [{"input_ids": [i] * 5, "labels": [i] * 5} for i in range(10)]
    packed = pack(examples, max_len=12)
    assert [len(p["input_ids"]) for p in packed] == [10] * 5
    train, held = split_eval(examples, 0.2, seed=1)
    again_train, again_held = split_eval(examples, 0.2, seed=1)
    assert len(held) == 2 and held == again_held and train == again_train
    assert split_eval(examples, 0.0, seed=1) == (examples, [])
    batch = PadCollator(pad_id=0)(
        [{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}]
    )
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][1].tolist() == [7] + [IGNORE_INDEX] * 7
    assert batch["attention_mask"][0].tolist()[:3] == [1, 1, 0]
