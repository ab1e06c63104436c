"""DeepSpeed under the HF Trainer: the rendered config for this device, DeepSpeed's communication
layer on the process group accelerate opened, and config errors as bad-config errors (exit 3).

Why `join_process_group` exists: on CPU accelerate opens the (gloo) process group with
torch.distributed itself and calls `deepspeed.init_distributed` only on an accelerator, so
`deepspeed.comm` stays uninitialised until `deepspeed.initialize`. ZeRO-3 parses its config
earlier, in `zero.Init` inside `from_pretrained`, and DeepSpeed's parser then takes the world size
to be 1: the Trainer's `train_batch_size` (micro x accumulation x the real world size) fails its
check (`train_batch_size 8 != 4*1*1`). Handing DeepSpeed the open group first makes every parse
see the real world size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lora_contract.types import TrainerConfig

from .errors import InvalidConfigError

CONFIG_ERROR_PREFIX = "distributed: the DeepSpeed config is invalid"


def deepspeed_for_device(config: TrainerConfig, on_cuda: bool) -> dict[str, Any] | None:
    """The rendered DeepSpeed config, with half precision turned off on CPU (no bf16 kernels)."""
    if not config.deepspeed:
        return None
    ds = copy.deepcopy(config.deepspeed)
    if not on_cuda:
        ds["bf16"] = {"enabled": False}
        ds["fp16"] = {"enabled": False}
    return ds


def zero_stage(ds: Mapping[str, Any] | None) -> int | None:
    """The ZeRO stage of a DeepSpeed config (None without DeepSpeed or without a stage)."""
    if not ds:
        return None
    stage = ds.get("zero_optimization", {}).get("stage")
    return stage if isinstance(stage, int) else None


def _fixed(value: Any) -> int | None:
    """A batch number the config pins (None where it says "auto" or leaves it out)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def batch_mismatch(
    ds: Mapping[str, Any], micro: int, accumulation: int, world_size: int
) -> str | None:
    """Where the DeepSpeed config's batch numbers disagree with the trainer's own (the spec's
    micro batch and accumulation, per-rank overrides applied, on this world size), as one line;
    None where they agree. The two must come from one rendering of the same spec."""
    problems = []
    ds_micro = _fixed(ds.get("train_micro_batch_size_per_gpu"))
    if ds_micro is not None and ds_micro != micro:
        problems.append(
            f"train_micro_batch_size_per_gpu {ds_micro} != training.microBatchSize {micro}"
        )
    ds_accumulation = _fixed(ds.get("gradient_accumulation_steps"))
    if ds_accumulation is not None and ds_accumulation != accumulation:
        problems.append(
            f"gradient_accumulation_steps {ds_accumulation} != "
            f"training.gradientAccumulation {accumulation}"
        )
    ds_global = _fixed(ds.get("train_batch_size"))
    expected = micro * accumulation * world_size
    if ds_global is not None and ds_global != expected:
        problems.append(
            f"train_batch_size {ds_global} != microBatchSize {micro} x gradientAccumulation "
            f"{accumulation} x world size {world_size} = {expected}"
        )
    if not problems:
        return None
    return f"{CONFIG_ERROR_PREFIX}: " + "; ".join(problems)


def check_batch(
    ds: Mapping[str, Any] | None, micro: int, accumulation: int, world_size: int
) -> None:
    """Fail with exit 3 before any weight is loaded when the batch numbers disagree."""
    problem = batch_mismatch(ds, micro, accumulation, world_size) if ds else None
    if problem:
        raise InvalidConfigError(problem)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (DeepSpeed's and transformers' span several)."""
    lines = [line.strip(" -") for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("For further information")]
    return "; ".join(lines) or type(exc).__name__


@contextmanager
def config_errors() -> Iterator[None]:
    """What DeepSpeed or the Trainer reject in the DeepSpeed config is a bad config: retrying the
    pod cannot fix it, so it exits 3 with the reason instead of 75."""
    from deepspeed.runtime.config import DeepSpeedConfigError

    try:
        yield
    except (AssertionError, ValueError, DeepSpeedConfigError) as exc:
        raise InvalidConfigError(f"{CONFIG_ERROR_PREFIX}: {one_line(exc)}") from None


def join_process_group() -> None:
    """Give `deepspeed.comm` the process group accelerate opened (see the module docstring). A
    no-op where DeepSpeed has one already or no group is open (alone, `zero.Init` opens one)."""
    import torch.distributed
    from deepspeed import comm

    if comm.is_initialized() or not torch.distributed.is_initialized():
        return
    comm.init_distributed(
        dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False, verbose=False
    )


def check_parsed(args: Any) -> None:
    """DeepSpeed's own parser over the config the Trainer filled (batch sizes from its arguments
    and the world size), as `zero.Init` and `deepspeed.initialize` will parse it later."""
    from deepspeed.runtime.config import DeepSpeedConfig

    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is None:
        return
    # Values that disagree with the Trainer's arguments: the Trainer raises only once the model
    # is loaded (`trainer_config_finalize`); fail before that.
    mismatches = [m.strip(" -") for m in getattr(hf_config, "mismatches", [])]
    if mismatches:
        raise InvalidConfigError(f"{CONFIG_ERROR_PREFIX}: " + "; ".join(mismatches))
    with config_errors():
        DeepSpeedConfig(copy.deepcopy(hf_config.config))
