"""Trainer failures carry their exit code, so the Job's podFailurePolicy can tell a bad config
(fail at once) from a transient problem (retry from the latest checkpoint)."""

from __future__ import annotations

from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT


class TrainerError(Exception):
    """A failure with a clear, one-line message for the user and the pod's termination log."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConfigError(TrainerError):
    """Bad config or bad data: retrying cannot help."""

    exit_code = EXIT_INVALID_CONFIG


class TransientError(TrainerError):
    """S3 unreachable, upload failed, ...: the pod is retried and resumes from a checkpoint."""

    exit_code = EXIT_TRANSIENT
