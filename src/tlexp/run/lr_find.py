"""`lr_find=true`: Lightning's learning-rate range test (`Tuner.lr_find`) on the first phase, before training.

It runs in a Trainer of its own: the finder replaces a Trainer's callbacks while it sweeps, which would remove the
PhaseSchedule, and it sets one learning rate for every optimizer group. The groups that the first phase freezes
are frozen for the sweep, so it measures what that phase trains. The finder restores the weights afterwards. The
plot goes to `<run>/lr_find.png` and the suggestion to the console and metrics.json, with the overrides that
would apply it to the first phase (keeping its ratio between groups). Training then runs with the rates as
configured: the suggestion is never applied silently.
"""

from __future__ import annotations

import io
import logging
import math
import time

import lightning as L
import matplotlib.pyplot as plt
from lightning.pytorch.tuner import Tuner

from tlexp.model.phases import bn_eval_groups

from .atomic import write_bytes
from .build import Run

log = logging.getLogger(__name__)
STEPS = 100  # Lightning's default number of learning rates tried


def find_lr(run: Run) -> dict:
    started = time.perf_counter()
    phase, module = run.phases[0], run.module
    for name, params in module.groups.items():
        for p in params:
            p.requires_grad_(name in phase.train)
    module.set_frozen_bn(bn_eval_groups(phase, module.group_names))
    args = run.cfg.trainer
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=run.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run.out),  # the finder's temporary checkpoint, deleted after
    )
    found = Tuner(trainer).lr_find(module, datamodule=run.datamodule, num_training=STEPS, update_attr=False)
    suggestion = found.suggestion()
    figure, buffer = found.plot(suggest=suggestion is not None), io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    plot = run.out / "lr_find.png"
    write_bytes(plot, buffer.getvalue())
    top = max(phase.lr.values())
    overrides = apply_overrides(run.strategy["phases"][0]["lr"], suggestion) if suggestion is not None else []
    rises = loss_rises_at(found.results["lr"], found.results["loss"])
    if suggestion is None:
        said = "no suggestion (the loss did not fall steadily over the range); see the plot"
    else:
        said = (
            f"Lightning's suggestion (steepest descent) is {suggestion:.1e} for phase 1 '{phase.name}', whose highest "
            f"rate is now {top:.1e}; to train with it, keeping the ratio between groups, add: {' '.join(overrides)}"
        )
    if rises is not None:
        said += (
            f". The loss rises 10% above its minimum from {rises:.1e} on: keep the highest rate below that (a head "
            "that starts converged, head_init: probe, has little loss left to fall, so there read this, not the "
            "suggestion)"
        )
    print(f"\nlr_find: {said}. Plot: {plot}. This run trains with the configured rates.\n", flush=True)
    return {
        "suggestion": suggestion,
        "loss_rises_at": rises,
        "phase": phase.name,
        "configured": top,
        "overrides": overrides,
        "plot": str(plot),
        "seconds": round(time.perf_counter() - started, 2),
    }


def apply_overrides(lr_spec, suggestion: float) -> list[str]:
    """Overrides that set phase 1's highest rate to `suggestion`, the others in the same ratio to it."""
    if not isinstance(lr_spec, dict):
        return [f"strategy.phases.0.lr={suggestion:.1e}"]
    top = max(lr_spec.values())
    return [f"strategy.phases.0.lr.{k}={suggestion * v / top:.1e}" for k, v in lr_spec.items()]


def loss_rises_at(lrs: list[float], losses: list[float], skip: int = 10, factor: float = 1.1) -> float | None:
    """The first rate after the loss's minimum (the first `skip` points left out) where it exceeds factor x minimum."""
    points = [(lr, loss) for lr, loss in list(zip(lrs, losses, strict=True))[skip:] if math.isfinite(loss)]
    if not points:
        return None
    low = min(range(len(points)), key=lambda i: points[i][1])
    return next((lr for lr, loss in points[low:] if loss > factor * points[low][1]), None)
