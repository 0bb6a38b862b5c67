"""Weight decay at run time: matrices and kernels decay, norm weights and biases (1-D) never do (timm's rule)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from tlexp.train import train

from .conftest import short_phases


class OptimizerGroups(Callback):
    """Each optimizer group's name, weight decay and parameter shapes at the first step of every epoch."""

    def __init__(self):
        self.seen: dict[int, list[dict]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.seen[trainer.current_epoch] = [
                {"name": g["name"], "wd": g["weight_decay"], "dims": {p.ndim for p in g["params"]}}
                for g in trainer.optimizers[0].param_groups
            ]


def test_one_dimensional_parameters_get_no_weight_decay_in_trainable_groups(tiny_cfg):
    groups = OptimizerGroups()
    train(tiny_cfg(short_phases("gradual", 1), "optimizer.weight_decay=0.05", "cache.mode=off"), callbacks=[groups])
    last_phase = groups.seen[2]  # everything trains
    assert {g["name"] for g in last_phase} == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    for g in last_phase:
        assert g["wd"] == (0.0 if g["dims"] == {1} else 0.05), g
        assert g["dims"] == {1} or 1 not in g["dims"], g  # a group decays all of its parameters or none
    head_phase = {(g["name"], g["wd"]) for g in groups.seen[0]}
    assert ("head", 0.05) in head_phase and ("stage4", 0.05) not in head_phase  # frozen groups: no decay at all
