"""Every strategy trains and tests end to end on the real (shrunk) config and writes its run record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlexp.train import train

from .conftest import short_phases


@pytest.mark.parametrize("strategy", ["scratch", "feature_extraction", "finetune", "gradual"])
def test_strategy_fits_tests_and_writes_metrics(tiny_cfg, strategy):
    cfg = tiny_cfg(f"strategy={strategy}", short_phases(strategy))
    metrics = train(cfg)
    out = cfg.output_dir
    saved = json.loads((Path(out) / "metrics.json").read_text())
    assert saved == metrics
    assert metrics["strategy"] == strategy
    assert metrics["epochs"] == 2 * len(cfg.strategy.phases)
    assert metrics["weights"] == ("random" if strategy == "scratch" else f"file:{cfg.model.weights}")
    for key in ("acc", "f1", "loss"):
        assert 0.0 <= metrics["test"][key] <= (1.0 if key != "loss" else 100.0)
    assert metrics["dataset_sizes"] == {"train": 104, "val": 24, "test": 32}
    assert metrics["fit_seconds"] > 0 and metrics["best_val_acc"] is not None
    assert (Path(out) / "checkpoints" / "last.ckpt").is_file()
    assert metrics["checkpoint"] and metrics["checkpoint"].endswith(".ckpt")
    head_only = strategy == "feature_extraction"
    assert (metrics["trainable_params"] < metrics["total_params"] / 10) == head_only
    assert list((Path(out) / "tensorboard").glob("events.out.tfevents.*"))


def test_training_learns_the_synthetic_task(tiny_cfg):
    cfg = tiny_cfg("strategy=scratch", "strategy.phases.0.epochs=8", "strategy.phases.0.lr=3e-3")
    metrics = train(cfg)
    assert metrics["test"]["acc"] >= 0.6  # chance is 0.25
