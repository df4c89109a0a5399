"""The train stage: `train(cfg)` from one CPU process to torchrun FSDP2/TP, DCP checkpoints, metrics."""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "TrainConfig": "config",
    "load_config": "config",
    "train": "loop",
    "RunSummary": "loop",
    "load_model_from_run": "checkpoint",
    "complete_checkpoints": "checkpoint",
    "read_metrics": "metrics",
})
