"""Errors the engine raises, each with a stable machine-readable code.

The sidecar maps codes to HTTP statuses; the engine itself knows nothing about HTTP.
"""

from __future__ import annotations


class RemoraError(Exception):
    """Base class: `code` is stable and machine-readable, the message is for people."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RemoraError):
    code = "INVALID_INPUT"


class InputTooLong(InvalidInput):
    code = "INPUT_TOO_LONG"


class ModelNotFound(RemoraError):
    code = "MODEL_NOT_FOUND"


class UnsupportedTask(RemoraError):
    code = "UNSUPPORTED_TASK"


class ModelLoadError(RemoraError):
    """A model directory that cannot be turned into a runnable model."""

    code = "MODEL_LOAD_FAILED"


class UnsupportedArchitecture(ModelLoadError):
    code = "UNSUPPORTED_ARCHITECTURE"


class WeightsError(ModelLoadError):
    """Weights missing, unexpected, of the wrong shape, corrupt or in a refused format."""

    code = "WEIGHTS_INVALID"


class PathNotAllowed(ModelLoadError):
    code = "PATH_NOT_ALLOWED"


class InvalidModelId(InvalidInput):
    """A model id that cannot name a registered model (path separators like '..', absolute paths)."""

    code = "INVALID_MODEL_ID"


class ModelTooLarge(ModelLoadError):
    """The model alone needs more than the whole memory budget: a configuration error."""

    code = "MODEL_TOO_LARGE"


class Retryable(RemoraError):
    """A condition that passes: callers may retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoading(Retryable):
    code = "MODEL_LOADING"


class MemoryBusy(Retryable):
    """No room for a load: every loaded model is running a batch or pinned."""

    code = "MEMORY_BUSY"


class QueueFull(Retryable):
    code = "QUEUE_FULL"


class ResourceExhausted(Retryable):
    """Out of memory in a forward pass even after evicting idle models and splitting the batch."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(RemoraError):
    code = "DEADLINE_EXCEEDED"


class ShuttingDown(Retryable):
    code = "SHUTTING_DOWN"
