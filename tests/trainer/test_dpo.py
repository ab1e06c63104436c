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
from lora_trainer.data import BadRow
from lora_trainer.errors import InvalidConfigError
from lora_trainer.objectives import preference_metrics
from lora_trainer.preference_data import TokenizePairs, _after, load_pairs

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
        (
            {"dataset": {"format": "instruction"}},
            "dataset.format holds no preference pairs with method dpo (it is instruction)",
        ),
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
    assert {r["loss_path"] for r in logged} == {"trl-fused-logprobs"}
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


# ------------------------------------------------------------------- row rules, one by one

USER = {"role": "user", "content": "Which fruit goes with red?"}
GOOD = {"role": "assistant", "content": "apple"}
BAD = {"role": "assistant", "content": "coconut"}

BAD_ROWS: list[tuple[str, Any, str]] = [
    ("prompt-completion", "a string", "expected a JSON object (got str)"),
    (
        "prompt-completion",
        {"prompt": "Q", "chosen": " a", "rejected": " a"},
        SAME := "chosen and rejected are the same",
    ),
    (
        "chat",
        {"chosen": "text", "rejected": [BAD]},
        "field 'chosen' must be a non-empty list of messages",
    ),
    (
        "chat",
        {"chosen": [], "rejected": [BAD]},
        "field 'chosen' must be a non-empty list of messages",
    ),
    (
        "chat",
        {"prompt": "text", "chosen": [GOOD], "rejected": [BAD]},
        "field 'prompt' must be a non-empty list of messages",
    ),
    (
        "chat",
        {"chosen": ["x"], "rejected": [BAD]},
        "chosen message 0 must be an object with a string 'content'",
    ),
    (
        "chat",
        {"chosen": [{"role": "user"}], "rejected": [BAD]},
        "chosen message 0 must be an object with a string 'content'",
    ),
    (
        "chat",
        {"chosen": [USER, {"role": "bot", "content": "x"}], "rejected": [BAD]},
        "chosen message 1 has role 'bot'",
    ),
    (
        "chat",
        {"chosen": [USER, GOOD], "rejected": [{**USER, "content": "Other?"}, BAD]},
        "no prompt: give a prompt message list or a shared first message",
    ),
    (
        "chat",
        {"prompt": [USER], "chosen": [GOOD], "rejected": [USER]},
        "rejected must end with an assistant message",
    ),
    ("chat", {"prompt": [USER], "chosen": [GOOD], "rejected": [GOOD]}, SAME),
]


@pytest.mark.parametrize(("fmt", "row", "reason"), BAD_ROWS, ids=[r for _, _, r in BAD_ROWS])
def test_each_bad_row_names_its_reason(tokenizer: Any, fmt: str, row: Any, reason: str) -> None:
    spec = LoRAJobSpec.model_validate(dpo_spec(Path("/d.jsonl"), fmt))
    with pytest.raises(BadRow) as err:
        TokenizePairs(spec, tokenizer)(row)
    assert str(err.value) == reason


def test_the_shared_prompt_stops_before_the_shorter_list_ends(tokenizer: Any) -> None:
    # chosen [u, a] and rejected [u, a, u2, a2] share two messages, but chosen needs an answer:
    # the prompt is [u] only
    spec = LoRAJobSpec.model_validate(dpo_spec(Path("/d.jsonl"), "chat"))
    more = [USER, GOOD, {"role": "user", "content": "And green?"}, BAD]
    pair = TokenizePairs(spec, tokenizer)({"chosen": [USER, GOOD], "rejected": more})
    render = tokenizer.apply_chat_template
    head = tokenizer(render([USER], tokenize=False, add_generation_prompt=True))["input_ids"]
    rejected = tokenizer(render(more, tokenize=False))["input_ids"]
    assert pair["prompt_ids"] == head
    assert pair["rejected_ids"] == rejected[len(head) :]


def test_after_takes_what_follows_the_common_prefix() -> None:
    assert _after([1, 2, 3], [1, 2, 3, 4, 5]) == [4, 5]
    assert _after([1, 2], [1, 2, 7]) == [7]
    assert _after([1, 2], [1, 9, 3]) == [9, 3]
    assert _after([5], [6, 7]) == [6, 7]


def test_fit_keeps_the_prompt_end_and_the_answers_start(tokenizer: Any) -> None:
    # maxSeqLength 16, maxPromptLength 4
    spec = LoRAJobSpec.model_validate(dpo_spec(Path("/d.jsonl"), maxPromptLength=4))
    fit = TokenizePairs(spec, tokenizer)
    fit.max_len = 16
    # a prompt of exactly 4 and answers of exactly 16 - 4 = 12: nothing cut
    assert fit._fit([1, 2, 3, 4], [5] * 12, [6] * 12) == {
        "prompt_ids": [1, 2, 3, 4],
        "chosen_ids": [5] * 12,
        "rejected_ids": [6] * 12,
    }
    assert fit.truncated == 0
    # 5 prompt tokens: the last 4 kept
    assert fit._fit([1, 2, 3, 4, 5], [7], [8])["prompt_ids"] == [2, 3, 4, 5]
    assert fit.truncated == 1
    # one answer over the room: both cut to 12
    assert fit._fit([1, 2, 3, 4], [5] * 13, [6] * 2)["chosen_ids"] == [5] * 12
    assert fit._fit([1, 2, 3, 4], [5] * 2, [6] * 13)["rejected_ids"] == [6] * 12
    assert fit.truncated == 3
    with pytest.raises(BadRow) as err:
        fit._fit([1], [], [2])
    assert str(err.value) == "chosen or rejected has no tokens"
    # without maxPromptLength: a prompt of 15 leaves one token, of 16 none
    plain = TokenizePairs(LoRAJobSpec.model_validate(dpo_spec(Path("/d.jsonl"))), tokenizer)
    plain.max_len = 16
    assert plain._fit(list(range(15)), [5, 5], [6])["chosen_ids"] == [5]
    with pytest.raises(BadRow) as err:
        plain._fit(list(range(16)), [5], [6])
    assert str(err.value) == "no answer tokens within maxSeqLength 16"


def test_without_a_dpo_section_the_defaults_apply(tmp_path: Path, tokenizer: Any) -> None:
    raw = dpo_spec(tmp_path / "d.jsonl")
    del raw["dpo"]
    spec = LoRAJobSpec.model_validate(raw)
    long_prompt = "alpha " * 40
    pair = TokenizePairs(spec, tokenizer)({"prompt": long_prompt, "chosen": " a", "rejected": " b"})
    assert pair["prompt_ids"] == tokenizer(long_prompt)["input_ids"]  # not cut


def test_load_pairs_messages_name_the_source(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = LoRAJobSpec.model_validate(dpo_spec(tmp_path / "d.jsonl"))
    with pytest.raises(InvalidConfigError) as err:
        load_pairs(tmp_path / "missing.jsonl", "dataset.source s3://b/k", spec, tokenizer)
    assert str(err.value).startswith("dataset.source s3://b/k: file not found")
    empty = write(tmp_path / "empty.jsonl", [])
    with pytest.raises(InvalidConfigError) as err:
        load_pairs(empty, "dataset.source s3://b/e", spec, tokenizer)
    assert str(err.value) == "dataset.source s3://b/e: the dataset is empty (no rows)"
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    with pytest.raises(InvalidConfigError) as err:
        load_pairs(junk, "dataset.source s3://b/j", spec, tokenizer)
    assert str(err.value).startswith(
        "dataset.source s3://b/j: no usable preference rows for method dpo, format "
        "prompt-completion: 1 of 1 rows are bad (first: row 1: invalid JSON"
    )
    missing = write(tmp_path / "m.jsonl", [{"prompt": "Q", "chosen": " a"}, {"prompt": "Q"}])
    with pytest.raises(InvalidConfigError) as err:
        load_pairs(missing, "dataset.source s3://b/m", spec, tokenizer)
    assert str(err.value) == (
        "dataset.source s3://b/m: no usable preference rows for method dpo, format "
        "prompt-completion: 2 of 2 rows are bad (first: row 1: missing field 'rejected')"
    )
    good = write(tmp_path / "g.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}])
    capsys.readouterr()
    load_pairs(good, "dataset.source s3://b/g", spec, tokenizer)
    assert capsys.readouterr().out == (
        "[lora-trainer] data dataset.source s3://b/g: 1 of 1 rows usable\n"
    )


def test_the_row_size_bound_follows_max_seq_length(tmp_path: Path, tokenizer: Any) -> None:
    # maxSeqLength 32768: 64 x 32768 = 2 MiB per row; a 1.2 MB prompt is within it (the default
    # bound, 1 MiB, would skip it), and maxPromptLength keeps its last 8 tokens
    raw = dpo_spec(tmp_path / "d.jsonl", maxPromptLength=8)
    raw["dataset"]["maxSeqLength"] = 32768
    spec = LoRAJobSpec.model_validate(raw)
    row = {"prompt": "alpha " * 200_000, "chosen": " apple", "rejected": " lime"}
    path = write(tmp_path / "big.jsonl", [row])
    with pytest.warns(UserWarning, match="1 rows truncated"):
        (pair,) = load_pairs(path, "dataset.source", spec, tokenizer)
    assert len(pair["prompt_ids"]) == 8


def test_chat_rows_need_a_chat_template(tokenizer: Any) -> None:
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    spec = LoRAJobSpec.model_validate(dpo_spec(Path("/d.jsonl"), "chat"))
    with pytest.raises(InvalidConfigError) as err:
        TokenizePairs(spec, plain)({"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]})
    assert str(err.value) == (
        "dataset.format chat needs a tokenizer with a chat template; this base model has none "
        "(use prompt-completion: prompt, chosen and rejected strings)"
    )


def test_dpo_arguments_carry_the_shared_ones_and_the_dpo_section(tmp_path: Path) -> None:
    from lora_contract.types import TrainerConfig, TrainingMethod
    from lora_trainer.objectives import OBJECTIVES, dpo_arguments, objective_for
    from lora_trainer.train import training_arguments

    spec = dpo_spec(tmp_path / "d.jsonl", beta=0.25, lossType="ipo")
    document = {"jobName": "j", "namespace": "n", "runId": "r1", "outputUri": "s3://b/p/n/j/r1"}
    config = TrainerConfig.model_validate({**document, "spec": spec})
    shared = training_arguments(config, tmp_path / "out", False, False, 1)
    args = dpo_arguments(config, shared)
    assert type(args).__name__ == "DPOConfig"
    assert (args.beta, args.loss_type, args.max_length) == (0.25, ["ipo"], 64)
    assert args.label_names == [] and args.hub_token is None and args.dataset_num_proc is None
    assert args.activation_offloading is False  # on CPU, as lora_trainer.offload decides
    assert (args.learning_rate, args.max_steps, args.seed) == (5e-3, 20, shared.seed)
    assert args.per_device_train_batch_size == 8 and args.output_dir == str(tmp_path / "out")
    assert objective_for(config) is OBJECTIVES[TrainingMethod.dpo]
    defaults = {**spec}
    del defaults["dpo"]
    plain = TrainerConfig.model_validate({**document, "spec": defaults})
    assert (dpo_arguments(plain, shared).beta, dpo_arguments(plain, shared).loss_type) == (
        0.1,
        ["sigmoid"],
    )
    sft = TrainerConfig.model_validate(
        {**document, "spec": {**defaults, "method": "sft", "dataset": spec["dataset"]}}
    )
    assert objective_for(sft).method == TrainingMethod.sft
    assert objective_for(sft).arguments(sft, shared) is shared
    assert objective_for(sft).callbacks(None) == []  # type: ignore[arg-type]
    offloading = {**spec, "training": {**spec["training"], "activationOffloading": True}}
    asked = TrainerConfig.model_validate({**document, "spec": offloading})
    assert dpo_arguments(asked, shared).activation_offloading is False  # use_cpu
    shared.use_cpu = False
    assert dpo_arguments(asked, shared).activation_offloading is True
