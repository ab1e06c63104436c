"""Preference rows (prompt, chosen, rejected) -> token ids for DPO, bad rows counted like SFT's.

The formats are the contract's `PREFERENCE_FORMATS`: prompt-completion rows hold three strings,
chat rows hold chosen and rejected message lists (and an optional prompt message list; without
it the prompt is the messages the two lists share). Rows are tokenized here, not by TRL, so that
the row size bound, the bad-row report, `dpo.maxPromptLength` (the prompt's end is kept) and
`dataset.maxSeqLength` (the answers' start is kept) apply before training and are reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_contract.types import DatasetFormat, LoRAJobSpec

from .data import BadRow, RowReport, _text, read_rows, row_limit_bytes
from .errors import InvalidConfigError

Pair = dict[str, list[int]]  # prompt_ids, chosen_ids, rejected_ids: what TRL's collator reads
ROLES = ("system", "user", "assistant", "tool")


def _messages(row: dict[str, Any], name: str, required: bool = True) -> list[dict[str, str]]:
    value = row.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value:
        raise BadRow(f"field {name!r} must be a non-empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRow(f"{name} message {i} must be an object with a string 'content'")
        if message.get("role") not in ROLES:
            raise BadRow(f"{name} message {i} has role {message.get('role')!r}")
    return value


class TokenizePairs:
    """Row -> Pair for one preference format, with `dpo.fields` applied."""

    def __init__(self, spec: LoRAJobSpec, tokenizer: Any) -> None:
        self.format = spec.dataset.format
        self.tok = tokenizer
        fields = spec.dpo.fields if spec.dpo else None
        self.names = {
            "prompt": (fields and fields.prompt) or "prompt",
            "chosen": (fields and fields.chosen) or "chosen",
            "rejected": (fields and fields.rejected) or "rejected",
        }
        self.max_prompt = spec.dpo.max_prompt_length if spec.dpo else None
        self.max_len = spec.dataset.max_seq_length
        self.truncated = 0

    def __call__(self, row: Any) -> Pair:
        if not isinstance(row, dict):
            raise BadRow(f"expected a JSON object (got {type(row).__name__})")
        if self.format == DatasetFormat.chat:
            prompt, chosen, rejected = self._chat(row)
        else:
            prompt, chosen, rejected = self._text(row)
        if chosen == rejected:
            raise BadRow("chosen and rejected are the same")
        return self._fit(prompt, chosen, rejected)

    def _ids(self, text: str, special: bool) -> list[int]:
        ids: list[int] = self.tok(text, add_special_tokens=special)["input_ids"]
        return ids

    def _text(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        n = self.names
        prompt = self._ids(_text(row, n["prompt"]), special=True)
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        chosen = self._ids(_text(row, n["chosen"]), special=False) + eos
        rejected = self._ids(_text(row, n["rejected"]), special=False) + eos
        return prompt, chosen, rejected

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        text = self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return self._ids(str(text), special=False)

    def _chat(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        n = self.names
        prompt = _messages(row, n["prompt"], required=False)
        chosen = _messages(row, n["chosen"])
        rejected = _messages(row, n["rejected"])
        if not prompt:  # the implicit prompt: the messages both answers share
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and (
                chosen[shared] == rejected[shared]
            ):
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise BadRow("no prompt: give a prompt message list or a shared first message")
        for name, answer in (("chosen", chosen), ("rejected", rejected)):
            if answer[-1]["role"] != "assistant":
                raise BadRow(f"{name} must end with an assistant message")
        if self.tok.chat_template is None:
            raise InvalidConfigError(
                "dataset.format chat needs a tokenizer with a chat template; this base model "
                "has none (use prompt-completion: prompt, chosen and rejected strings)"
            )
        head = self._render(prompt, generation_prompt=True)
        answers = [
            self._render(prompt + answer, generation_prompt=False) for answer in (chosen, rejected)
        ]
        return head, _after(head, answers[0]), _after(head, answers[1])

    def _fit(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> Pair:
        """Keep the prompt's end (maxPromptLength), then cut the answers to maxSeqLength."""
        cut = False
        if self.max_prompt is not None and len(prompt) > self.max_prompt:
            prompt, cut = prompt[-self.max_prompt :], True
        room = self.max_len - len(prompt)
        if room <= 0:
            raise BadRow(f"no answer tokens within maxSeqLength {self.max_len}")
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected, cut = chosen[:room], rejected[:room], True
        if not chosen or not rejected:
            raise BadRow("chosen or rejected has no tokens")
        self.truncated += cut
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def _after(head: list[int], rendered: list[int]) -> list[int]:
    """The tokens `rendered` adds after its common prefix with `head`."""
    common = 0
    while common < min(len(head), len(rendered)) and head[common] == rendered[common]:
        common += 1
    return rendered[common:]


def load_pairs(path: Path, source: str, spec: LoRAJobSpec, tokenizer: Any) -> list[Pair]:
    """Read and tokenize a preference file; no usable row is a config error (exit 3)."""
    report = RowReport(source)
    rows = read_rows(path, source, report, row_limit_bytes(spec.dataset.max_seq_length))
    if not rows and report.total == 0 and not report.bad:
        raise InvalidConfigError(f"{source}: the dataset is empty (no rows)")
    tokenize = TokenizePairs(spec, tokenizer)
    pairs: list[Pair] = []
    for number, row in rows:
        try:
            pairs.append(tokenize(row))
        except BadRow as exc:
            report.record_bad(number, str(exc))
    report.used = len(pairs)
    report.truncated = tokenize.truncated
    if not pairs:
        first = report.first_bad_note()
        raise InvalidConfigError(
            f"{source}: no usable preference rows for method dpo, format "
            f"{spec.dataset.format.value}: {report.bad} of {report.total} rows are bad{first}"
        )
    report.announce()
    return pairs
