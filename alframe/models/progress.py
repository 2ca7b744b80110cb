"""One progress bar per training run: optimisation steps done out of the run's total, with ETA.

Lightning's own bar restarts every epoch, so a 100-epoch MAE or a 200-step round shows no
time left for the run as a whole. :class:`RunProgress` replaces it on the command line: one
``tqdm`` bar over ``trainer.estimated_stepping_batches`` (epochs × batches, or ``max_steps``),
the last loss (and validation Dice, when there is one) as its postfix. Only global rank 0 draws.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class RunProgress(Callback):
    """A single bar over every optimisation step of a fit (see the module docstring).

    Args:
        description: the bar's label, e.g. ``"MAE"`` or ``"round 2 training"``.
        leave: keep the finished bar on screen.
    """

    def __init__(self, description: str, leave: bool = True) -> None:
        super().__init__()
        self.description = description
        self.leave = leave
        self._bar: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Open the bar at the resumed step (a resumed run shows what is left)."""
        if trainer.global_rank != 0:
            return
        from tqdm.auto import tqdm

        total = trainer.estimated_stepping_batches
        self._bar = tqdm(
            total=int(total) if math.isfinite(total) else None,
            initial=int(trainer.global_step),
            desc=self.description,
            unit="step",
            leave=self.leave,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Advance by one step; show the last loss and, once validated, the validation Dice."""
        if self._bar is None:
            return
        self._bar.update(1)
        shown = {}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("loss") or key == "val/dice":
                shown[key.split("/")[-1] if key.endswith("loss") else key] = f"{float(value):.3f}"
        if shown:
            self._bar.set_postfix(shown, refresh=False)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the bar."""
        self._close()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Close the bar so the error message starts on a clean line."""
        self._close()
