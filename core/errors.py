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
