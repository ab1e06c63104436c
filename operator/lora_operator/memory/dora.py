"""What DoRA (`lora.useDora`) costs beyond LoRA, per adapted linear, from PEFT's code path.

PEFT (0.21.2, `peft/tuners/lora/variants.py: DoraLinearVariant.forward` and
`peft/tuners/lora/dora.py: DoraLinearLayer.forward/get_lora_weight/get_weight_norm`) runs, for a
linear of `i` inputs and `o` outputs on `T` tokens:

1. `get_lora_weight`: the full delta `lora_B(lora_A(eye(i))).T` (o x i), through the adapters'
   forward so that FSDP works; its graph keeps the identity matrix (i x i) saved for lora_A.
2. `weight.to(x.dtype)` (the base weight in the adapters' dtype) and `get_weight_norm`:
   `W + scale * BA` (two more o x i temporaries) and its row norms, detached (DoRA paper
   sec. 4.3), so all of step 1-2 is freed when the module's forward returns: transient.
3. `lora_result = lora_B(lora_A(x))` and `(m/||W+sBA|| - 1) * base_result + m/||..|| *
   lora_result * s`: the two products save `base_result` and `lora_result` (T x o each) for
   the magnitude's gradient, and make three T x o temporaries in the promoted dtype.
4. With dropout, `base_result` is not the base layer's output but `F.linear(dropout(x), W)`
   (variants.py), which saves the o x i weight copy of step 2 for the input's gradient.

The magnitude vector (o per module) is a trainable parameter like lora_A/B: counted with them
by `estimate.lora_param_count` and split out as `dora_magnitude`.

Measured, not assumed: `tests/memory/test_dora_memory.py` counts the saved tensors still alive
after a DoRA forward (saved-tensors hooks + weak references) and the live bytes inside
`DoraLinearLayer.forward` (a dispatch mode that tracks every storage until it is freed) on the
CPU, with and without autocast and dropout, and checks these formulas against them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DoraDtypes:
    """Bytes per element of the tensors DoRA makes."""

    compute: float  # the base model's dtype (bf16: 2)
    adapter: float  # lora_A/B and the magnitude (PEFT's fp32 default: 4)
    autocast: bool = True  # the adapters' matmuls run under autocast (HF Trainer's bf16/fp16)
    quantized: bool = False  # the base weight is dequantized into a new tensor

    @property
    def matmul(self) -> float:
        """The adapters' matmul operands and outputs: autocast casts them to the compute dtype;
        without it they run in the adapter dtype."""
        return self.compute if self.autocast else self.adapter

    @property
    def product(self) -> float:
        """The magnitude-scaling products: the adapter-dtype magnitude times the output."""
        return max(self.adapter, self.compute)

    @property
    def base_weight_copied(self) -> bool:
        """`weight.to(x.dtype)` copies the base weight (or it was dequantized into a new one)."""
        return self.quantized or self.adapter != self.compute


def saved_bytes(
    in_features: int, out_features: int, tokens: int, dropout: bool, dt: DoraDtypes
) -> float:
    """Bytes DoRA adds to what one module saves for backward (alive until its backward):
    base_result and lora_result, the three o-sized vectors of the scale (weight norm, m/norm,
    m/norm - 1), and with dropout the base weight copy of the extra matmul."""
    base_result = dt.matmul if dropout else dt.compute  # F.linear's output, or the base output
    saved = tokens * out_features * (base_result + dt.matmul) + 3 * out_features * dt.adapter
    if dropout and dt.base_weight_copied:
        saved += out_features * in_features * dt.matmul
    return saved


def weight_phase_bytes(in_features: int, out_features: int, rank: int, dt: DoraDtypes) -> float:
    """Live bytes at `W + scale * BA` in get_weight_norm (step 2): the saved identity, the
    delta, the base weight copy (if any), the scaled delta and the sum; plus the delta's small
    rank-sized intermediates (eye @ A^T, the autocast copies of A and B)."""
    copies = 3 + (1 if dt.base_weight_copied else 0)
    return (
        in_features * in_features * dt.matmul
        + copies * out_features * in_features * dt.adapter
        + (2 * in_features + out_features) * rank * dt.matmul
    )


def token_phase_bytes(in_features: int, out_features: int, tokens: int, dt: DoraDtypes) -> float:
    """Live bytes at the magnitude-scaling products (step 3) beyond the saved tensors: the
    identity, delta and weight copy still referenced by the forward's locals, and three T x o
    temporaries."""
    kept = 1 + (1 if dt.base_weight_copied else 0)
    return (
        in_features * in_features * dt.matmul
        + kept * out_features * in_features * dt.adapter
        + 3 * tokens * out_features * dt.product
    )


def transient_bytes(
    in_features: int, out_features: int, rank: int, tokens: int, dt: DoraDtypes
) -> float:
    """One module's forward peak beyond the tensors it saves (the larger of the two phases)."""
    return max(
        weight_phase_bytes(in_features, out_features, rank, dt),
        token_phase_bytes(in_features, out_features, tokens, dt),
    )


def transient_at_peak(transient: float, loss_bytes: float) -> float:
    """What the largest module transient adds to the step's peak. It happens in the forward
    (and, with checkpointing, in the backward's recomputation), when the loss's buffers are not
    allocated yet or are freed already; so it raises the peak only by what exceeds them."""
    return max(0.0, transient - loss_bytes)
