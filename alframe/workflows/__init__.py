"""End-to-end workflows that glue data, models and tracking (used by the CLI and benchmarks)."""

from alframe.workflows.training import (
    TrainEvalResult,
    evaluate_checkpoint,
    run_dir_for,
    train_and_evaluate,
)

__all__ = ["TrainEvalResult", "evaluate_checkpoint", "run_dir_for", "train_and_evaluate"]
