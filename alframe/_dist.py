"""Which process of a multi-process launch this is (torchrun, SLURM, Lightning's DDP launcher).

Under data-parallel training every process runs the whole command; only the first one should
evaluate, write summaries, print them and log to MLflow. Read from the launchers' environment
variables, so it is known before (and without) a Trainer.
"""

from __future__ import annotations

import os

__all__ = ["global_rank", "is_global_zero", "local_rank", "world_size"]


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def global_rank() -> int:
    """This process's rank: ``RANK`` (torchrun), ``SLURM_PROCID`` (srun with several tasks), or
    Lightning's ``NODE_RANK``/``LOCAL_RANK`` of processes it launched itself; 0 otherwise."""
    if "RANK" in os.environ:
        return _int_env("RANK")
    if _int_env("SLURM_NTASKS") > 1 and "SLURM_PROCID" in os.environ:
        return _int_env("SLURM_PROCID")
    return max(_int_env("NODE_RANK"), _int_env("LOCAL_RANK"))


def is_global_zero() -> bool:
    """Whether this is the process that evaluates, writes summaries and logs to MLflow."""
    return global_rank() == 0


def world_size() -> int:
    """How many processes the launch has: ``WORLD_SIZE`` (torchrun, Lightning), else
    ``SLURM_NTASKS``; 1 for a plain process."""
    if "WORLD_SIZE" in os.environ:
        return max(1, _int_env("WORLD_SIZE"))
    return max(1, _int_env("SLURM_NTASKS"))


def local_rank() -> int:
    """This process's index on its node: ``LOCAL_RANK`` (torchrun, Lightning), else
    ``SLURM_LOCALID`` under a multi-task SLURM step; 0 otherwise."""
    if "LOCAL_RANK" in os.environ:
        return _int_env("LOCAL_RANK")
    if _int_env("SLURM_NTASKS") > 1:
        return _int_env("SLURM_LOCALID")
    return 0
