"""Run by tests/test_ddp.py as a script: gradual unfreezing under trainer=ddp_cpu (2 processes, gloo).

Lightning's DDP launcher starts this script again for rank 1. Each rank saves its parameters, trainable
flags and group lrs at the start and at the end of every phase, for the test to compare.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from tlexp.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


class Dump(Callback):
    def __init__(self, out: Path, phase_ends: list[int]):
        self.out, self.phase_ends = out, phase_ends

    def _save(self, trainer, pl_module, tag: str) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        torch.save(
            {
                "groups": {g: [names[id(p)] for p in ps] for g, ps in pl_module.groups.items()},
                "params": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
                "requires_grad": {g: all(p.requires_grad for p in ps) for g, ps in pl_module.groups.items()},
                "lr": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
                "world_size": trainer.world_size,
            },
            self.out / f"rank{trainer.global_rank}_{tag}.pt",
        )

    def on_train_start(self, trainer, pl_module):
        self._save(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:  # lrs and flags as the phase set them, mid-phase
            self._save(trainer, pl_module, f"epoch{trainer.current_epoch}_batch0")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch in self.phase_ends:
            self._save(trainer, pl_module, f"end{trainer.current_epoch}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out, weights = Path(sys.argv[1]), sys.argv[2]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "trainer=ddp_cpu",
                "strategy=gradual",
                "strategy.phases.0.epochs=1",
                "strategy.phases.1.epochs=1",
                "strategy.phases.2.epochs=1",
                "model=test_resnet",
                f"model.weights={weights}",
                "dataset=synthetic",
                "data.batch_size=8",
                "data.num_workers=0",
                "trainer.enable_progress_bar=false",
                "trainer.limit_train_batches=3",
                f"output_dir={out / 'run'}",
            ],
        )
    train(cfg, callbacks=[Dump(out, phase_ends=[0, 1, 2])])
