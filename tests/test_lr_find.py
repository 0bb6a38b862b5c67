"""lr_find=true: Lightning's range test on the first phase, its plot and suggestion, never applied silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlexp.run.lr_find import apply_overrides, loss_rises_at
from tlexp.train import train


def test_apply_overrides_keep_the_ratio_between_groups():
    assert apply_overrides({"head": 1e-3, "backbone": 3e-4}, 2e-3) == [
        "strategy.phases.0.lr.head=2.0e-03",
        "strategy.phases.0.lr.backbone=6.0e-04",
    ]
    assert apply_overrides(1e-3, 5e-4) == ["strategy.phases.0.lr=5.0e-04"]


def test_loss_rises_at_is_the_first_rate_past_the_minimum_with_10_percent_more_loss():
    lrs = [10.0**k for k in range(-8, 0)]
    losses = [0.1, 0.6, 0.6, 0.55, 0.5, 0.52, 0.56, 2.0]  # the first point is left out (skip=1)
    assert loss_rises_at(lrs, losses, skip=1) == pytest.approx(1e-2)  # 0.56 > 1.1 x 0.5
    assert loss_rises_at(lrs, [0.5] * 8, skip=1) is None
    assert loss_rises_at(lrs[:3], [float("nan")] * 3, skip=1) is None


def test_lr_find_saves_its_plot_prints_its_suggestion_and_trains_as_configured(tiny_cfg, capsys):
    cfg = tiny_cfg("strategy=lp_ft", "strategy.phases.0.epochs=1", "lr_find=true")
    metrics = train(cfg)
    out = Path(cfg.output_dir)
    found = metrics["lr_find"]
    assert (out / "lr_find.png").stat().st_size > 5000 and found["plot"] == str(out / "lr_find.png")
    assert found["phase"] == "all" and found["configured"] == pytest.approx(1e-3)
    assert not list(out.glob(".lr_find_*.ckpt"))  # the finder's own checkpoint is gone
    printed = capsys.readouterr().out
    assert "lr_find: " in printed and "This run trains with the configured rates." in printed
    assert found["loss_rises_at"] is None or f"from {found['loss_rises_at']:.1e} on" in printed
    if found["suggestion"] is not None:
        assert f"add: {' '.join(found['overrides'])}" in printed
    first = metrics["phase_history"][0]
    assert first["lr"]["head"] == pytest.approx(1e-3) and first["lr"]["stage1"] == pytest.approx(3e-4)
    assert all(first["trainable"].values())  # the finder froze nothing that the phase trains
