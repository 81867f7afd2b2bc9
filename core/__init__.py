"""Remora's engine: unpadded forward passes for small encoder models."""

from remora.core.config import EngineSettings, ModelSpec
from remora.core.engine import Engine
from remora.core.errors import RemoraError

__all__ = ["Engine", "EngineSettings", "ModelSpec", "RemoraError"]
