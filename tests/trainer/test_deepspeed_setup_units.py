"""Unit tests of lora_trainer.deepspeed_setup on real objects, no subprocess: the CPU rendering of
the DeepSpeed config, the batch check before any weight loads, DeepSpeed's own parser over the
config the Trainer filled (transformers' HfTrainerDeepSpeedConfig), and deepspeed.comm joining a
one-process gloo group opened with torch.distributed, as accelerate opens it on CPU."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from lora_contract.pod import EXIT_INVALID_CONFIG
from lora_contract.types import LoRAJobSpec, Strategy, TrainerConfig
from lora_operator.deepspeed_config import deepspeed_config
from lora_trainer.deepspeed_setup import (
    CONFIG_ERROR_PREFIX,
    batch_mismatch,
    check_batch,
    check_parsed,
    deepspeed_for_device,
    join_process_group,
    one_line,
)
from lora_trainer.errors import InvalidConfigError

MICRO, ACCUMULATION = 2, 4


def job_spec() -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "m", "source": "pvc://models/m"},
            "dataset": {"source": "/data/train.jsonl", "format": "chat"},
            "output": {"bucket": "out"},
            "training": {
                "microBatchSize": MICRO,
                "gradientAccumulation": ACCUMULATION,
                "maxGradNorm": 0.5,
            },
        }
    )


def rendered(strategy: Strategy = Strategy.deepspeed_zero3) -> dict[str, Any]:
    ds = deepspeed_config(job_spec(), strategy)
    assert ds is not None
    return ds


def trainer_config(ds: dict[str, Any] | None) -> TrainerConfig:
    return TrainerConfig(
        job_name="j",
        run_id="r",
        output_uri="s3://out/p/default/j/r",
        spec=job_spec(),
        deepspeed=ds,
    )


# deepspeed_for_device


def test_on_cpu_both_half_precisions_are_off_and_the_rest_is_kept() -> None:
    ds = rendered()
    assert ds["bf16"]["enabled"] is True  # the rendering asks for bf16: CPU must turn it off
    config = trainer_config(ds)
    kept = copy.deepcopy(config.deepspeed)
    cpu = deepspeed_for_device(config, on_cuda=False)
    expected = {key: value for key, value in ds.items() if key not in ("bf16", "fp16")}
    expected["bf16"] = {"enabled": False}
    expected["fp16"] = {"enabled": False}
    assert cpu == expected
    assert config.deepspeed == kept  # the config itself is not touched


def test_on_cuda_the_rendered_config_is_returned_as_is() -> None:
    ds = rendered()
    config = trainer_config(ds)
    assert deepspeed_for_device(config, on_cuda=True) == ds
    assert config.deepspeed is not None and config.deepspeed["bf16"] == {"enabled": True}


def test_the_returned_config_shares_nothing_with_the_trainer_config() -> None:
    """The Trainer fills "auto" values in place (HfTrainerDeepSpeedConfig.fill_match): that must
    not reach the config the trainer read."""
    config = trainer_config(rendered())
    kept = copy.deepcopy(config.deepspeed)
    for on_cuda in (False, True):
        ds = deepspeed_for_device(config, on_cuda)
        assert ds is not None
        ds["zero_optimization"]["reduce_bucket_size"] = 123
        ds["train_batch_size"] = 8
    assert config.deepspeed == kept


def test_no_deepspeed_config_gives_none() -> None:
    for on_cuda in (False, True):
        assert deepspeed_for_device(trainer_config(None), on_cuda) is None
        assert deepspeed_for_device(trainer_config({}), on_cuda) is None


# batch_mismatch / check_batch


def test_two_disagreements_are_joined_by_semicolon() -> None:
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3}
    assert batch_mismatch(ds, 2, 1, 1) == (
        f"{CONFIG_ERROR_PREFIX}: train_micro_batch_size_per_gpu 4 != training.microBatchSize 2; "
        "gradient_accumulation_steps 3 != training.gradientAccumulation 1"
    )


def test_check_batch_raises_the_mismatch_as_a_bad_config() -> None:
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}
    with pytest.raises(InvalidConfigError) as caught:
        check_batch({**ds, "train_batch_size": 16}, 2, 4, 3)
    assert caught.value.message == (
        f"{CONFIG_ERROR_PREFIX}: train_batch_size 16 != microBatchSize 2 x gradientAccumulation "
        "4 x world size 3 = 24"
    )
    assert caught.value.exit_code == EXIT_INVALID_CONFIG
    with pytest.raises(InvalidConfigError) as micro:
        check_batch(ds, 3, 4, 1)
    assert micro.value.message == (
        f"{CONFIG_ERROR_PREFIX}: train_micro_batch_size_per_gpu 2 != training.microBatchSize 3"
    )
    with pytest.raises(InvalidConfigError) as accumulation:
        check_batch(ds, 2, 5, 1)
    assert accumulation.value.message == (
        f"{CONFIG_ERROR_PREFIX}: gradient_accumulation_steps 4 != training.gradientAccumulation 5"
    )


def test_check_batch_passes_agreeing_numbers_and_no_config() -> None:
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}
    check_batch({**ds, "train_batch_size": 24}, 2, 4, 3)  # 2 x 4 x 3
    check_batch(ds, 2, 4, 7)
    check_batch(None, 2, 4, 1)
    check_batch({}, 2, 4, 1)


# one_line


def test_one_line_keeps_letters_at_the_ends_and_names_an_empty_exception() -> None:
    assert one_line(RuntimeError("XLA backend\n - not here X")) == "XLA backend; not here X"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert one_line(AssertionError("\n -\nFor further information visit x\n")) == ("AssertionError")


# check_parsed


@pytest.fixture
def hf_configs() -> Iterator[None]:
    """HfDeepSpeedConfig registers itself globally (is_deepspeed_zero3_enabled): undo that."""
    yield
    hf_deepspeed().unset_hf_deepspeed_config()


def hf_deepspeed() -> Any:
    """transformers.integrations.deepspeed (untyped)."""
    return importlib.import_module("transformers.integrations.deepspeed")


def trainer_filled(ds: dict[str, Any], micro: int, accumulation: int) -> Any:
    """`args.hf_deepspeed_config` as TrainingArguments builds it: "auto" values filled from the
    arguments, disagreements recorded in `mismatches`."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir="unused",
        use_cpu=True,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.5,
        report_to="none",
    )
    hf_config = hf_deepspeed().HfTrainerDeepSpeedConfig(ds)
    hf_config.trainer_config_process(args)
    return hf_config


def cpu_rendered() -> dict[str, Any]:
    ds = deepspeed_for_device(trainer_config(rendered()), on_cuda=False)
    assert ds is not None
    return ds


@pytest.mark.usefixtures("hf_configs")
def test_check_parsed_names_the_trainers_mismatches() -> None:
    ds = {**cpu_rendered(), "gradient_clipping": 1.5}
    hf_config = trainer_filled(ds, MICRO + 1, ACCUMULATION)
    assert len(hf_config.mismatches) == 2 and hf_config.mismatches[0].startswith("- ds ")
    with pytest.raises(InvalidConfigError) as caught:
        check_parsed(SimpleNamespace(hf_deepspeed_config=hf_config))
    assert caught.value.message == (
        f"{CONFIG_ERROR_PREFIX}: "
        f"ds train_micro_batch_size_per_gpu={MICRO} vs hf per_device_train_batch_size={MICRO + 1}"
        "; ds gradient_clipping=1.5 vs hf max_grad_norm=0.5"
    )
    assert caught.value.exit_code == EXIT_INVALID_CONFIG


@pytest.mark.usefixtures("hf_configs")
def test_check_parsed_passes_a_config_deepspeed_accepts_and_leaves_it_as_it_was() -> None:
    # data_efficiency: DeepSpeed's parser fills its sub-sections in place, on a shallow copy
    ds = {**cpu_rendered(), "data_efficiency": {"enabled": False}}
    hf_config = trainer_filled(ds, MICRO, ACCUMULATION)
    assert hf_config.mismatches == []
    before = copy.deepcopy(hf_config.config)
    assert before["train_batch_size"] == MICRO * ACCUMULATION  # "auto", filled by the Trainer
    check_parsed(SimpleNamespace(hf_deepspeed_config=hf_config))
    assert hf_config.config == before


@pytest.mark.usefixtures("hf_configs")
def test_check_parsed_turns_deepspeeds_rejection_into_a_bad_config() -> None:
    ds = cpu_rendered()
    ds["zero_optimization"]["stage3_max_live_parameters"] = "lots"
    hf_config = trainer_filled(ds, MICRO, ACCUMULATION)
    assert hf_config.mismatches == []  # the Trainer does not look at this one
    with pytest.raises(InvalidConfigError) as caught:
        check_parsed(SimpleNamespace(hf_deepspeed_config=hf_config))
    message = caught.value.message
    assert message.startswith(f"{CONFIG_ERROR_PREFIX}: ") and "\n" not in message
    assert "stage3_max_live_parameters" in message and "lots" in message


@pytest.mark.usefixtures("hf_configs")
def test_check_parsed_parses_a_config_without_the_trainers_mismatch_list() -> None:
    """transformers' plain HfDeepSpeedConfig has no `mismatches`: DeepSpeed's parser still runs."""
    HfDeepSpeedConfig = hf_deepspeed().HfDeepSpeedConfig
    good = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 2, "train_batch_size": 2})
    assert not hasattr(good, "mismatches")
    check_parsed(SimpleNamespace(hf_deepspeed_config=good))
    bad = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 2, "train_batch_size": 3})
    with pytest.raises(InvalidConfigError, match="3 != 2"):
        check_parsed(SimpleNamespace(hf_deepspeed_config=bad))


def test_check_parsed_without_deepspeed_does_nothing() -> None:
    check_parsed(SimpleNamespace(hf_deepspeed_config=None))
    check_parsed(SimpleNamespace())
    check_parsed(object())


# join_process_group


@pytest.fixture
def fresh_comm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """deepspeed.comm without a backend, and no torch.distributed group; both undone after.
    DeepSpeed's shared-memory all-reduce op is marked unavailable: its backend would otherwise
    JIT-compile it (about 20 s whenever the build cache was made with other flags), and joining
    the group does not depend on it."""
    import deepspeed.comm.comm as ds_comm
    import deepspeed.ops
    import torch.distributed as dist

    assert not dist.is_initialized(), "a process group is open already"
    monkeypatch.setattr(ds_comm, "cdb", None)
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm", False)
    try:
        yield ds_comm
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_join_without_an_open_group_leaves_deepspeed_alone(fresh_comm: Any) -> None:
    join_process_group()
    assert fresh_comm.cdb is None
    assert not fresh_comm.is_initialized()


def test_join_hands_the_open_gloo_group_to_deepspeed(fresh_comm: Any) -> None:
    dist: Any = importlib.import_module("torch.distributed")

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert not fresh_comm.is_initialized()
    join_process_group()
    assert fresh_comm.is_initialized()
    assert fresh_comm.get_world_size() == 1 and fresh_comm.get_rank() == 0
    assert fresh_comm.cdb.get_backend() == "gloo"
    backend = fresh_comm.cdb
    join_process_group()  # joined already: a no-op
    assert fresh_comm.cdb is backend
