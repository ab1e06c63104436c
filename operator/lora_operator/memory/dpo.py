"""What DPO (`method: dpo`) costs beyond SFT per step, from TRL's code path (trl 1.16).

`DPOTrainer._compute_loss` with a PEFT model and `ref_model=None`:

1. The policy forward runs on chosen and rejected together: the collator stacks them into one
   batch of 2 x microBatchSize sequences (`DataCollatorForPreference`), so everything the
   forward saves for backward (activations, eager scores, adapter inputs) is SFT's at twice the
   micro-batch: `estimate.py` computes those terms at that batch.
2. Log-probs: TRL patches the model with a fused LM head (`add_fused_lm_head`,
   `kernels/chunked_logprob.py`), always, whatever `training.chunkedLoss` says: logits are never
   materialised. The kernel saves the final hidden states (compute dtype) and per-token fp32
   vectors, and walks the vocabulary in tiles of at most 4096 tokens x 32768 vocabulary entries.
   Its backward makes a fp32 gradient of the hidden states and one tile again. On CUDA only the
   completion positions are scored; the plan does not know the prompt share, so every position
   counts (an upper bound). This replaces the `logits` term: `dpo_logprobs`.
3. The reference forward runs after the policy's forward, under `no_grad` with TRL's frozen
   `ref` adapter active (`use_adapter(..., "ref")`, a copy of the starting adapter; B = 0 for a
   fresh one: the base model): no second copy of the base model, nothing saved.
   It is a transient on top of the policy's saved tensors: one layer's working set on the
   2 x micro-batch (layer input and output, the gated MLP's two inner tensors) and the log-prob
   kernel's tile and outputs. It happens before the backward, whose log-prob gradient buffers
   are not allocated yet, so it raises the peak only by what exceeds them: `dpo_reference`.
4. The `ref` adapter itself lives for the whole run: TRL builds it with `PeftModel.add_adapter`
   and copies the starting adapter into it, so it has the adapter's parameter count, in PEFT's
   adapter dtype (fp32: PEFT upcasts a new adapter; TRL's QLoRA bf16 cast touches trainable
   parameters only, and `ref` is frozen), no gradients and no optimizer states. ZeRO-3
   partitions it like the adapter (the copy is made before DeepSpeed partitions the model):
   `dpo_ref_adapter`. Measured on the tiny model: tests/trainer/test_dpo_paths_units.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE, and trl/trainer/utils.py's vocabulary chunk
LOGPROB_TOKEN_TILE = 4096
LOGPROB_VOCAB_TILE = 32768
# Per scored token, fp32 unless said: log_probs, entropy, mean_logits, log_z, is_top1 (bool),
# the int64 label: what the kernel returns and saves
PER_TOKEN_OUTPUT_BYTES = 4 + 4 + 4 + 4 + 1 + 8
SEQUENCES_PER_PAIR = 2  # chosen and rejected, one batch


@dataclass(frozen=True)
class DpoShape:
    """What the DPO terms read: tokens of one policy forward (2 x micro-batch x seq)."""

    tokens: int
    hidden: int
    vocab: int
    mlp_width: int  # intermediate size (x active experts); the gated MLP's inner width
    compute_bytes: float


def policy_micro_batch(micro_batch: int) -> int:
    """Sequences of one policy forward: each pair's chosen and rejected answer."""
    return SEQUENCES_PER_PAIR * micro_batch


def logprob_tile(tokens: int, vocab: int) -> int:
    """Elements of the kernel's matmul tile (compute dtype) and its fp32 softmax pass."""
    return min(tokens, LOGPROB_TOKEN_TILE) * min(vocab, LOGPROB_VOCAB_TILE)


def logprob_saved_bytes(s: DpoShape) -> float:
    """Kept from the forward to the backward: the hidden states and the per-token outputs."""
    return s.tokens * (s.hidden * s.compute_bytes + PER_TOKEN_OUTPUT_BYTES)


def logprob_backward_bytes(s: DpoShape) -> float:
    """The backward's own buffers: the fp32 hidden-state gradient and one tile (+ fp32)."""
    return s.tokens * s.hidden * 4 + logprob_tile(s.tokens, s.vocab) * (s.compute_bytes + 4)


def logprobs_bytes(s: DpoShape) -> float:
    """`dpo_logprobs`: the fused log-prob head at its peak (its backward)."""
    return logprob_saved_bytes(s) + logprob_backward_bytes(s)


def reference_forward_bytes(s: DpoShape) -> float:
    """The reference forward's peak, nothing saved: one layer's input and output and the MLP's
    two inner tensors, then the log-prob kernel's tile and its per-token outputs."""
    layer = s.tokens * (2 * s.hidden + 2 * s.mlp_width) * s.compute_bytes
    head = logprob_tile(s.tokens, s.vocab) * (s.compute_bytes + 4)
    head += s.tokens * PER_TOKEN_OUTPUT_BYTES
    return max(layer, head)


def reference_at_peak(s: DpoShape) -> float:
    """`dpo_reference`: what the reference forward adds beyond the log-prob backward buffers,
    which are not alive while it runs (it comes before the backward)."""
    return max(0.0, reference_forward_bytes(s) - logprob_backward_bytes(s))


def ref_adapter_bytes(adapter_params: int, adapter_bytes: float, shards: int) -> float:
    """`dpo_ref_adapter`: TRL's frozen `ref` copy of the starting adapter, as many parameters as
    the adapter in the adapter's dtype, split over the ranks that shard it (ZeRO-3; else 1)."""
    return adapter_params * adapter_bytes / max(shards, 1)
