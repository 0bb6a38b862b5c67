"""Every strategy trains and tests end to end on the real (shrunk) config and writes its run record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_recall

from tlexp.data import TransferDataModule
from tlexp.evaluation.report import collect_logits
from tlexp.model.inference import load_trained
from tlexp.train import train

from .conftest import short_phases


def recomputed_test_metrics(metrics: dict, cfg) -> dict:
    """Test accuracy, macro F1, loss and per-class recall of the run's best checkpoint, recomputed on the images."""
    module = load_trained(metrics["checkpoint"])
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    datamodule = TransferDataModule(dataset, **module.eval_preprocessing().as_dict(), batch_size=16, num_workers=0)
    logits, labels = collect_logits(module, datamodule.evaluation_loader("test"))
    num_classes = logits.shape[1]
    recall = multiclass_recall(logits, labels, num_classes, average=None)
    return {
        "acc": float((logits.argmax(1) == labels).float().mean()),
        "f1": float(multiclass_f1_score(logits, labels, num_classes, average="macro")),
        "loss": float(F.cross_entropy(logits, labels)),
        **{f"recall/{name}": float(r) for name, r in zip(module.class_names, recall, strict=True)},
    }


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
    assert metrics["test"] == pytest.approx(recomputed_test_metrics(metrics, cfg), abs=1e-4)
    assert metrics["dataset_sizes"] == {"train": 104, "val": 24, "test": 32}
    assert metrics["best_val_acc"] == pytest.approx(max(row["val/acc"] for row in metrics["history"]), abs=1e-6)
    assert (Path(out) / "checkpoints" / "last.ckpt").is_file()
    assert metrics["checkpoint"] and metrics["checkpoint"].endswith(".ckpt")
    head_only = strategy == "feature_extraction"
    assert (metrics["trainable_params"] < metrics["total_params"] / 10) == head_only
    assert list((Path(out) / "tensorboard").glob("events.out.tfevents.*"))


def test_training_learns_the_synthetic_task(tiny_cfg):
    cfg = tiny_cfg("strategy=scratch", "strategy.phases.0.epochs=8", "strategy.phases.0.lr=3e-3")
    metrics = train(cfg)
    assert metrics["test"]["acc"] >= 0.6  # chance is 0.25
