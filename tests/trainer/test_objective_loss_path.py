"""The loss path a run names (start-up log line, metrics.jsonl's loss_path) is the one its
objective really takes: SFT's is the path train.py chose (loss.py); DPO's is TRL's loss over
its fused log-probs whatever `training.chunkedLoss` says. The DPO run through the operator
(tests/operator/test_dpo_through_operator.py) reads the real log line."""

from __future__ import annotations

from lora_contract.types import TrainingMethod
from lora_trainer.loss import LossPath
from lora_trainer.objectives import OBJECTIVES


def test_sft_names_the_path_train_chose() -> None:
    sft = OBJECTIVES[TrainingMethod.sft]
    assert sft.loss_path(LossPath.chunked.value) == "chunked"
    assert sft.loss_path(LossPath.standard.value) == "standard"
    assert sft.loss_path(LossPath.fused.value) == "fused-liger"


def test_dpo_names_trls_loss_never_the_chunked_cross_entropy() -> None:
    dpo = OBJECTIVES[TrainingMethod.dpo]
    for chosen in LossPath:
        assert dpo.loss_path(chosen.value) == "trl-fused-logprobs"


def test_every_method_has_an_objective() -> None:
    assert set(OBJECTIVES) == set(TrainingMethod)
