"""method dpo: preference pairs through TRL's DPOTrainer on the tiny random-init model (CPU).

The synthetic preference set: for each question the chosen answer is the data's rule (the
colour's fruit), the rejected one always "coconut". DPO must raise the chosen-vs-rejected reward
margin; the rows' tokens are checked against the tokenizer by hand; bad rows are counted; a set
without one usable row is a config error (exit 3); a run resumed from a checkpoint takes the
same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lora_contract.storage import S3Store
from lora_contract.types import LoRAJobSpec, Progress
from lora_devkit.tinymodel import COLOURS, FRUITS
from lora_trainer.errors import InvalidConfigError
from lora_trainer.objectives import preference_metrics
from lora_trainer.preference_data import load_pairs

from .conftest import base_spec


def text_rows(n: int) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        c = i % len(COLOURS)
        rows.append(
            {
                "prompt": f"Q: Which fruit goes with {COLOURS[c]}?\nA:",
                "chosen": f" The {COLOURS[c]} fruit is {FRUITS[c]}.",
                "rejected": " coconut coconut coconut.",
            }
        )
    return rows


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_spec(data: Path, fmt: str = "prompt-completion", **extra: Any) -> dict[str, Any]:
    spec = base_spec(data, fmt)
    spec["method"] = "dpo"
    spec["dpo"] = {"beta": 0.1, **extra}
    spec["dataset"]["evalSplit"] = 0.0
    spec["training"].update(
        maxSteps=20, logInterval=4, checkpointInterval=20, learningRate=5e-3, microBatchSize=8
    )
    return spec


def records(store: S3Store, run: Any) -> list[dict[str, Any]]:
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ----------------------------------------------------------------------------- the contract


def test_method_rules_name_the_fields(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    ok = LoRAJobSpec.model_validate(dpo_spec(data))
    assert ok.method.value == "dpo" and ok.dpo is not None and ok.dpo.loss_type.value == "sigmoid"
    cases = [
        ({"dataset": {"format": "instruction"}}, "dataset.format holds no preference pairs with method dpo (it is instruction)"),
        ({"dataset": {"packing": True}}, "dataset.packing: method dpo keeps each pair whole"),
        ({"dpo": {"maxPromptLength": 64}}, "dpo.maxPromptLength 64 must be below"),
        ({"method": "sft"}, "dpo: set only with method dpo"),
        ({"dpo": {"lossType": "nope"}}, "dpo.lossType"),
    ]
    for change, message in cases:
        spec = dpo_spec(data)
        for key, value in change.items():
            spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
        with pytest.raises(ValidationError) as err:
            LoRAJobSpec.model_validate(spec)
        assert message in str(err.value) or message.replace(".", "", 1) in str(err.value), (
            change,
            str(err.value),
        )


def test_reward_logs_map_to_progress_fields() -> None:
    logs = {"loss": 0.6, "rewards/margins": 0.25, "rewards/accuracies": 0.75}
    assert preference_metrics(logs) == {"reward_margin": 0.25, "reward_accuracy": 0.75}
    assert preference_metrics({"eval_rewards/margins": -1.5}) == {"reward_margin": -1.5}
    assert preference_metrics({"loss": 0.6}) == {}


# ------------------------------------------------------------------------------ the rows


def test_text_pairs_tokens_by_hand_and_bad_rows_counted(tmp_path: Path, tokenizer: Any) -> None:
    good = {"prompt": "Q: red?\nA:", "chosen": " apple", "rejected": " lime"}
    rows: list[Any] = [
        good,
        {"prompt": "Q: x", "chosen": " a"},  # no rejected
        {"prompt": "Q: x", "chosen": " a", "rejected": " a"},  # the same answer
        "not an object",
        {"prompt": "Q: x", "chosen": 3, "rejected": " b"},
    ]
    path = write(tmp_path / "p.jsonl", rows)
    spec = LoRAJobSpec.model_validate(dpo_spec(path))
    with pytest.warns(UserWarning, match="1 of 5 rows usable; 4 bad rows skipped"):
        pairs = load_pairs(path, "dataset.source", spec, tokenizer)
    eos = tokenizer.eos_token_id
    assert pairs == [
        {
            "prompt_ids": tokenizer("Q: red?\nA:")["input_ids"],
            "chosen_ids": tokenizer(" apple", add_special_tokens=False)["input_ids"] + [eos],
            "rejected_ids": tokenizer(" lime", add_special_tokens=False)["input_ids"] + [eos],
        }
    ]


def test_field_mapping_and_prompt_cut_keeps_its_end(tmp_path: Path, tokenizer: Any) -> None:
    row = {"q": "one two three four five six seven", "good": " apple", "bad": " lime"}
    path = write(tmp_path / "m.jsonl", [row])
    fields = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    spec = LoRAJobSpec.model_validate(dpo_spec(path, fields=fields, maxPromptLength=3))
    with pytest.warns(UserWarning, match="1 rows truncated"):
        (pair,) = load_pairs(path, "dataset.source", spec, tokenizer)
    assert pair["prompt_ids"] == tokenizer(row["q"])["input_ids"][-3:]


def test_chat_pairs_explicit_and_shared_prompt(tmp_path: Path, tokenizer: Any) -> None:
    user = [{"role": "user", "content": "Which fruit goes with red?"}]
    good = [{"role": "assistant", "content": "apple"}]
    bad = [{"role": "assistant", "content": "coconut"}]
    rows = [
        {"prompt": user, "chosen": good, "rejected": bad},
        {"chosen": user + good, "rejected": user + bad},  # the prompt is what they share
        {"prompt": user, "chosen": user, "rejected": bad},  # chosen ends on a user turn
    ]
    path = write(tmp_path / "c.jsonl", rows)
    spec = LoRAJobSpec.model_validate(dpo_spec(path, "chat"))
    with pytest.warns(UserWarning, match="chosen must end with an assistant message"):
        pairs = load_pairs(path, "dataset.source", spec, tokenizer)
    # the tiny model's template: "<|role|>\ncontent</s>\n" per message, "<|assistant|>\n" to ask
    head = tokenizer(
        "<|user|>\nWhich fruit goes with red?</s>\n<|assistant|>\n", add_special_tokens=False
    )["input_ids"]
    full = tokenizer(
        "<|user|>\nWhich fruit goes with red?</s>\n<|assistant|>\napple</s>\n",
        add_special_tokens=False,
    )["input_ids"]
    assert full[: len(head)] == head
    assert pairs[0] == pairs[1]
    assert pairs[0]["prompt_ids"] == head
    assert pairs[0]["chosen_ids"] == full[len(head) :]


def test_no_usable_rows_is_a_config_error(tmp_path: Path, tokenizer: Any) -> None:
    path = write(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": " a"}] * 3)
    spec = LoRAJobSpec.model_validate(dpo_spec(path))
    with pytest.raises(InvalidConfigError, match=r"no usable preference rows.*3 of 3 rows are bad"):
        load_pairs(path, "dataset.source", spec, tokenizer)


# ----------------------------------------------------------------------------- training


def test_dpo_raises_the_reward_margin(
    make_run: Any, store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write(tmp_path / "pref.jsonl", text_rows(48))
    run = make_run(spec=dpo_spec(data))
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    logged = [r for r in records(store, run) if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8, 12, 16, 20]
    margins = [r["reward_margin"] for r in logged]
    assert margins[-1] > margins[0] + 0.05 and margins[-1] > 0, margins
    assert logged[-1]["reward_accuracy"] >= 0.75, logged[-1]
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 20
    assert progress.reward_margin == margins[-1]
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))


def test_chat_pairs_train_and_no_usable_rows_exit_3(
    make_run: Any, store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in text_rows(16)
    ]
    spec = dpo_spec(write(tmp_path / "chat.jsonl", chat), "chat")
    spec["training"].update(maxSteps=4, checkpointInterval=4)
    run = make_run("chat", spec=spec)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    assert [r["step"] for r in records(store, run) if "reward_margin" in r] == [4]

    broken = dpo_spec(write(tmp_path / "broken.jsonl", [{"prompt": "Q", "chosen": " a"}] * 2))
    bad = make_run(spec=broken)
    code, message = bad.run_here(monkeypatch)
    assert code == 3, message
    assert "no usable preference rows" in message and "missing field 'rejected'" in message
    assert not store.exists(bad.location.child("final", "adapter_model.safetensors"))


def test_resumed_dpo_run_takes_the_same_steps(
    make_run: Any,
    store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    data = write(tmp_path / "pref.jsonl", text_rows(48))
    spec = dpo_spec(data)
    spec["training"].update(maxSteps=8, checkpointInterval=4, logInterval=2, keepCheckpoints=2)
    run = make_run(spec=spec)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    whole = {r["step"]: r["loss"] for r in records(store, run) if "loss" in r}
    assert sorted(whole) == [2, 4, 6, 8]
    # as if the pod died after checkpoint-4: the later checkpoint and the adapter are gone
    store.delete_prefix(run.location.child("checkpoint-8"))
    store.delete_prefix(run.location.child("final"))
    capfd.readouterr()
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    assert "resuming from checkpoint-4" in capfd.readouterr().err
    resumed = {r["step"]: r["loss"] for r in records(store, run) if "loss" in r}
    assert sorted(resumed) == [2, 4, 6, 8]
    for step in (6, 8):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-4), (step, resumed, whole)
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8
