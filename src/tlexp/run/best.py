"""The best checkpoint: the highest val accuracy, and on a tie the lower val log-loss.

A val set of tens of images ties often (equal counts of right answers); Lightning's ModelCheckpoint then keeps the
earliest of the tied epochs, however much the val loss fell after it. Here the later epoch wins a tie when its val
loss is lower, and the run records how many epochs tied with the one kept.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

ACC, LOSS = "val/acc", "val/loss"


class BestOnVal(ModelCheckpoint):
    def __init__(self, dirpath, filename: str = "best-{epoch:02d}"):
        super().__init__(dirpath=dirpath, filename=filename, monitor=ACC, mode="max", save_top_k=1)
        self.best_loss: float | None = None
        self.tied = 0  # other epochs with the best's val accuracy: > 0, the val loss chose among them

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if super().check_monitor_top_k(trainer, current):
            self.tied = 0
            return True
        if current is None or self.best_model_score is None:
            return False
        equal = bool(torch.eq(current.cpu(), self.best_model_score.cpu()))
        self.tied += int(equal)
        loss = trainer.callback_metrics.get(LOSS)
        lower = loss is not None and (self.best_loss is None or float(loss) < self.best_loss)
        return trainer.strategy.reduce_boolean_decision(equal and lower)  # every process decides alike (DDP)

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        loss = monitor_candidates.get(LOSS)
        self.best_loss = float(loss) if loss is not None else None
        super()._update_best_and_save(current, trainer, monitor_candidates)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_loss": self.best_loss, "tied": self.tied}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.best_loss = state_dict.get("best_loss")
        self.tied = int(state_dict.get("tied", 0))
