"""A tiny random-init Llama, a locally trained tokenizer and small datasets in every format.

No downloads: tests and `make demo` train this model for real on CPU. The datasets hold a simple,
learnable mapping (colour -> fruit, word reversal) so the loss visibly goes down in a few dozen
steps, and the prompt part is shared across rows so completion-only loss is meaningful.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_contract.types import DatasetFormat

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
FRUITS = ["apple", "lime", "berry", "banana", "plum", "mango", "olive", "coconut"]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]


def _example(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair from a deterministic rule the model can learn."""
    if rng.random() < 0.5:
        i = rng.randrange(len(COLOURS))
        return f"Which fruit goes with {COLOURS[i]}?", f"The {COLOURS[i]} fruit is {FRUITS[i]}."
    words = rng.sample(WORDS, 3)
    return f"Reverse: {' '.join(words)}", " ".join(reversed(words))


def example_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [_example(rng) for _ in range(n)]


def rows_for_format(fmt: DatasetFormat, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` rows in the default field names of `fmt`."""
    pairs = example_pairs(n, seed)
    if fmt == DatasetFormat.prompt_completion:
        return [{"prompt": f"Q: {q}\nA:", "completion": f" {a}"} for q, a in pairs]
    if fmt == DatasetFormat.chat:
        return [
            {
                "messages": [
                    {"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }
            for q, a in pairs
        ]
    return [_instruction_row(q, a) for q, a in pairs]


def _instruction_row(question: str, answer: str) -> dict[str, Any]:
    """Reversal tasks put their words in `input`; the others have an empty input."""
    if question.startswith("Reverse: "):
        return {"instruction": "Reverse the words.", "input": question[9:], "output": answer}
    return {"instruction": question, "input": "", "output": answer}


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_datasets(dest_dir: str | Path, n: int = 64, seed: int = 0) -> dict[DatasetFormat, Path]:
    """One JSONL file per format: {format: path}, e.g. dest/prompt-completion.jsonl."""
    dest = Path(dest_dir)
    return {
        fmt: write_jsonl(dest / f"{fmt.value}.jsonl", rows_for_format(fmt, n, seed))
        for fmt in DatasetFormat
    }


def _corpus() -> list[str]:
    """Text the tokenizer learns its merges from: every word the datasets can contain."""
    lines = [f"{q}\n{a}" for q, a in example_pairs(400, seed=123)]
    lines += [" ".join(COLOURS + FRUITS + WORDS), "Q: A: You answer briefly. Reverse the words."]
    return lines


def build_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (any text encodes) with pad/bos/eos and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def tiny_llama_config(vocab_size: int, layers: int = 2, hidden: int = 64) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_tiny_model(dest: str | Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a random-init Llama + tokenizer to `dest` (a from_pretrained-able directory)."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer), layers=layers, hidden=hidden)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
