"""A DeepSpeed config the trainer cannot run with is a bad config: exit 3 (the Job fails at once
instead of retrying the pod ten times) with the reason in progress.lastError, as for any other
bad config. The batch numbers are checked against the trainer's own before any weight loads;
DeepSpeed's and the Trainer's own checks of the rest are turned into the same error."""

from __future__ import annotations

from typing import Any

import pytest

from lora_contract.pod import EXIT_INVALID_CONFIG
from lora_contract.storage import S3Store
from lora_contract.types import Progress, Strategy
from lora_operator.deepspeed_config import deepspeed_config
from lora_trainer.deepspeed_setup import (
    CONFIG_ERROR_PREFIX,
    batch_mismatch,
    config_errors,
    one_line,
    zero_stage,
)
from lora_trainer.errors import InvalidConfigError

RENDERED = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}


def test_agreeing_or_auto_batch_numbers_pass() -> None:
    assert batch_mismatch({**RENDERED, "train_batch_size": "auto"}, 4, 2, 8) is None
    assert batch_mismatch({**RENDERED, "train_batch_size": 64}, 4, 2, 8) is None
    assert batch_mismatch(RENDERED, 4, 2, 3) is None  # no global batch: DeepSpeed computes it
    auto = {k: "auto" for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")}
    assert batch_mismatch(auto, 4, 2, 2) is None


def test_each_disagreeing_batch_number_is_named() -> None:
    micro = batch_mismatch(RENDERED, 8, 2, 1)
    assert micro == (
        f"{CONFIG_ERROR_PREFIX}: train_micro_batch_size_per_gpu 4 != training.microBatchSize 8"
    )
    accumulation = batch_mismatch(RENDERED, 4, 1, 1)
    assert accumulation == (
        f"{CONFIG_ERROR_PREFIX}: gradient_accumulation_steps 2 != training.gradientAccumulation 1"
    )
    world = batch_mismatch({**RENDERED, "train_batch_size": 8}, 4, 2, 2)
    assert world == (
        f"{CONFIG_ERROR_PREFIX}: train_batch_size 8 != microBatchSize 4 x gradientAccumulation 2 "
        "x world size 2 = 16"
    )
    both = batch_mismatch({**RENDERED, "train_batch_size": 6}, 4, 1, 1)
    assert both is not None and both.count(" != ") == 2 and "; " in both
    assert batch_mismatch({**RENDERED, "train_batch_size": True}, 4, 2, 1) is None  # not a number


def test_zero_stage() -> None:
    assert zero_stage(None) is None and zero_stage({}) is None
    assert zero_stage({"zero_optimization": {"stage": 3}}) == 3
    assert zero_stage({"zero_optimization": {"stage": "3"}}) is None
    assert zero_stage({"train_batch_size": 8}) is None


def test_deepspeed_parser_errors_are_bad_config_on_one_line() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    bad = {**RENDERED, "zero_optimization": {"stage": 3, "stage3_max_live_parameters": "lots"}}
    with pytest.raises(InvalidConfigError) as caught, config_errors():
        DeepSpeedConfig(bad)
    message = caught.value.message
    assert message.startswith(f"{CONFIG_ERROR_PREFIX}: ") and "\n" not in message
    assert "stage3_max_live_parameters" in message and "lots" in message
    assert "errors.pydantic.dev" not in message
    assert caught.value.exit_code == EXIT_INVALID_CONFIG
    assert one_line(ValueError("a\n - b\n\n")) == "a; b"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"train_batch_size": 12}, "train_batch_size 12 != microBatchSize 8"),
        (
            {"zero_optimization": {"stage3_max_live_parameters": "lots"}},
            "stage3_max_live_parameters",
        ),
        ({"gradient_clipping": 0.25}, "gradient_clipping=0.25 vs hf max_grad_norm=1.0"),
    ],
    ids=["batch", "invalid-value", "trainer-mismatch"],
)
def test_zero3_bad_deepspeed_config_exits_3_with_the_reason_in_progress(
    make_run: Any, store: S3Store, change: dict[str, Any], reason: str
) -> None:
    from .conftest import deep_merge

    first = make_run()
    ds = deepspeed_config(first.config.spec, Strategy.deepspeed_zero3)
    assert ds is not None
    run = make_run(deepspeed=deep_merge(ds, change))
    result = run.run()
    assert result.returncode == EXIT_INVALID_CONFIG, result.stderr[-4000:]
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "failed" and progress.last_error is not None
    assert progress.last_error.startswith(CONFIG_ERROR_PREFIX), progress.last_error
    assert reason in progress.last_error, progress.last_error
    assert f"lora-trainer: error: {CONFIG_ERROR_PREFIX}" in result.stderr
