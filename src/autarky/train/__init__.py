"""The train stage: `train(cfg)` from one CPU process to torchrun FSDP2/TP, DCP checkpoints, metrics.

Public API (imported lazily, so the CLI's other commands do not pay for torch.distributed):
`TrainConfig`, `load_config`, `train`, `RunSummary`, `load_model_from_run`, `complete_checkpoints`,
`read_metrics`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "autarky.train.config",
    "load_config": "autarky.train.config",
    "train": "autarky.train.loop",
    "RunSummary": "autarky.train.loop",
    "load_model_from_run": "autarky.train.checkpoint",
    "complete_checkpoints": "autarky.train.checkpoint",
    "read_metrics": "autarky.train.metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autarky.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
