"""Calibration maths: ECE on cases with known answers, and temperature scaling recovering a known temperature."""

from __future__ import annotations

import pytest
import torch

from tlexp.evaluation.calibration import expected_calibration_error, fit_temperature, nll, reliability_bins


def test_ece_is_zero_when_confidence_equals_accuracy_and_the_gap_otherwise():
    probs = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)  # 80 % right at 80 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([0] * 5 + [1] * 5)  # 50 % right at 80 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-6)
    bins = reliability_bins(probs, labels, 15)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 10


def test_temperature_scaling_recovers_the_temperature_that_generated_the_labels():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=gen)
    labels = torch.multinomial((logits / 2.5).softmax(1), 1, generator=gen).flatten()  # true T = 2.5
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    assert nll(logits, labels, t) < nll(logits, labels)


def _made_with_temperature(t: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 5, generator=gen)
    return logits, torch.multinomial((logits / t).softmax(1), 1, generator=gen).flatten()


def test_the_report_fits_its_temperature_on_val_never_on_the_split_it_judges(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tlexp.evaluation import report as evaluation

    val = _made_with_temperature(2.5, 600, seed=1)  # over the 50 images below which fitting is skipped
    test = _made_with_temperature(0.6, 600, seed=2)
    monkeypatch.setattr(evaluation, "collect_logits", lambda module, loader, device, limit: val)
    data = SimpleNamespace(class_names=list("abcde"), evaluation_loader=lambda split: split, splits={})
    summary = evaluation.evaluate(None, data, tmp_path, split="test", top_loss_count=0, logits=test)
    assert summary["temperature"] == pytest.approx(2.5, rel=0.15)  # val's; test's own would be near 0.6


def test_top_losses_are_the_most_confidently_wrong_first():
    from tlexp.evaluation.report import top_losses

    probs = torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.95, 0.05], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([1, 0, 0, 0, 1])  # wrong: 0 (0.6), 1 (0.9), 3 (0.7); right: 2, 4
    assert top_losses(probs, labels, 2) == [1, 3]
