"""The trainer's LORAJOB_* knobs: defaults, parsing, and one clear message per bad value."""

from __future__ import annotations

import pytest

from lora_trainer.errors import InvalidConfigError
from lora_trainer.settings import TrainerSettings


def test_defaults_when_unset_or_empty() -> None:
    defaults = TrainerSettings.from_env({})
    assert TrainerSettings.from_env({"LORAJOB_DDP_TIMEOUT_S": ""}) == defaults
    assert (defaults.rendezvous, defaults.max_restarts, defaults.ddp_timeout_s) == ("c10d", 3, 900)
    assert defaults.rendezvous_timeout_s == 600 and defaults.step_delay_s == 0.0
    from lora_trainer.main import TERMINATION_LOG

    assert TERMINATION_LOG == "/dev/termination-log"  # read raw by the failure path


def test_values_are_read_by_variable_name() -> None:
    knobs = TrainerSettings.from_env(
        {
            "LORAJOB_RENDEZVOUS": "static",
            "LORAJOB_RDZV_ID": "run-7",
            "LORAJOB_MAX_RESTARTS": "0",
            "LORAJOB_STEP_DELAY_S": "0.5",
            "LORAJOB_WORK_DIR": "/scratch",
            "UNRELATED": "x",
        }
    )
    assert (knobs.rendezvous, knobs.rendezvous_id, knobs.max_restarts) == ("static", "run-7", 0)
    assert (knobs.step_delay_s, knobs.work_dir) == (0.5, "/scratch")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LORAJOB_RENDEZVOUS", "etcd", "must be one of c10d, static (got 'etcd')"),
        ("LORAJOB_MAX_RESTARTS", "-1", "must be an integer >= 0 (got '-1')"),
        ("LORAJOB_MAX_RESTARTS", "many", "must be an integer >= 0 (got 'many')"),
        ("LORAJOB_DDP_TIMEOUT_S", "0", "must be a positive integer of seconds (got '0')"),
        ("LORAJOB_RENDEZVOUS_TIMEOUT", "soon", "must be a positive number of seconds"),
        ("LORAJOB_STEP_DELAY_S", "-1", "must be seconds >= 0 (got '-1')"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        TrainerSettings.from_env({name: value})
    assert info.value.message.startswith(f"env {name} {message}")
    assert info.value.exit_code == 3
