"""Shared fixtures: compose the real Hydra config and shrink it (tiny backbone, tiny data, few epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = "test_resnet.r160_in1k"  # 0.5M parameters, BatchNorm in every stage


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A 'pretrained' state dict for the tiny backbone, made here (the hub is out of reach)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(timm.create_model(TINY, num_classes=0).state_dict(), path)
    return path


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="tlexp.conf", version_base="1.3"):  # what the entry points use
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def tiny_cfg(tmp_path, tiny_weights):
    """The real config, shrunk: tiny ResNet, synthetic data, 1-2 epochs a phase, no workers."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg(
            "model=test_resnet",
            f"model.weights={tiny_weights}",
            "dataset=synthetic",
            "data.batch_size=16",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "report.enabled=false",  # the report has its own tests (test_after_training.py); skip its cost here
            "report.train_batch_preview=0",
            f"output_dir={tmp_path / 'run'}",
            f"cache.dir={tmp_path / 'feature_cache'}",
            *overrides,
        )

    return make


def short_phases(strategy: str, epochs: int = 2) -> str:
    """An override that keeps a strategy's phases but gives each phase `epochs` epochs (2 by default)."""
    cfg = compose_cfg(f"strategy={strategy}")
    items = []
    for p in cfg.strategy.phases:
        lr = p.lr if not isinstance(p.lr, DictConfig) else "{" + ", ".join(f"{k}: {v}" for k, v in p.lr.items()) + "}"
        items.append(f"{{name: {p.name}, epochs: {epochs}, train: [{', '.join(p.train)}], lr: {lr}}}")
    return f"strategy.phases=[{', '.join(items)}]"
