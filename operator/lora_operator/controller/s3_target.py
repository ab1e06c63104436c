"""Where a LoRAJob's outputs go, resolved in one place: the spec's `output` section, else the
operator's `s3` defaults. Validation, the trainer pod's env, progress reading and serving all
ask this, so they cannot disagree about which endpoint or Secret a job uses."""

from __future__ import annotations

from dataclasses import dataclass

from lora_contract.types import LoRAJobSpec, SecretRef

from ..api.operator_config import OperatorConfig


@dataclass(frozen=True)
class S3Target:
    endpoint: str | None
    region: str | None
    secret: SecretRef | None

    def problem(self) -> str | None:
        """What is missing before a run can be launched, naming the fields; None if nothing."""
        if not self.endpoint:
            return "spec.output.endpoint is not set and the operator config has no s3.endpoint"
        if self.secret is None:
            return (
                "spec.output.credentialsSecret is not set and the operator config has no "
                "s3.credentialsSecret"
            )
        return None


def s3_target(spec: LoRAJobSpec, config: OperatorConfig) -> S3Target:
    """Each of endpoint, region and Secret from the spec when it sets it, else the default."""
    output, default = spec.output, config.s3
    return S3Target(
        endpoint=output.endpoint or default.endpoint,
        region=output.region or default.region,
        secret=output.credentials_secret or default.credentials_secret,
    )
