"""Calibration maths: ECE on cases with known answers, and temperature scaling recovering a known temperature."""

from __future__ import annotations

import pytest
import torch

from tlexp.calibration import expected_calibration_error, fit_temperature, nll, reliability_bins


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
