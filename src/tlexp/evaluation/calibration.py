"""Calibration: expected calibration error, reliability bins, and temperature scaling fitted on val."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> list[dict]:
    """Equal-width confidence bins (lo, hi]: count, mean confidence and accuracy of the top-1 predictions."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence <= hi)
        n = int(inside.sum())
        rows.append(
            {
                "lo": lo,
                "hi": hi,
                "count": n,
                "confidence": float(confidence[inside].mean()) if n else None,
                "accuracy": float(correct[inside].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum over bins of (share of samples) x |accuracy - mean confidence| (Guo et al. 2017)."""
    total = len(labels)
    rows = [r for r in reliability_bins(probs, labels, bins) if r["count"]]
    return sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows)


T_BOUNDS = (0.05, 20.0)
MIN_VAL_IMAGES = 50  # fewer held-out images than this fit one number to noise
MIN_VAL_NLL = 1e-3  # below it the val set is (all but) perfectly classified: NLL keeps falling as T -> 0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T); fitted on held-out (val) data."""
    log_t = torch.zeros(1, requires_grad=True)  # optimise log T so that T stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float(), labels.detach()

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*T_BOUNDS))


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """`{"temperature": T}` fitted on these (val) logits, or `{"temperature_skipped": why}` when T would not mean
    anything: too few images, a (nearly) perfectly classified val set, or an optimum at a bound of T.

    On a perfectly classified val set the NLL falls without end as T -> 0: the fit lands on the floor and makes
    every test prediction near-certain, which ruins the test NLL while looking like an ECE gain.
    """
    n = len(labels)
    if n < MIN_VAL_IMAGES:
        return {"temperature_skipped": f"val has {n} images, fewer than {MIN_VAL_IMAGES}: too few to fit it on"}
    if (logits.argmax(dim=1) == labels).all():
        return {"temperature_skipped": "val is classified perfectly: its NLL falls without end as T -> 0"}
    if nll(logits, labels) < MIN_VAL_NLL:
        return {"temperature_skipped": f"val NLL is {nll(logits, labels):.1e}: nothing left for a temperature to fix"}
    t = fit_temperature(logits, labels)
    if not T_BOUNDS[0] * 1.01 < t < T_BOUNDS[1] / 1.01:  # at a bound: the optimum lies beyond it
        return {"temperature_skipped": f"the fitted temperature ran to its bound ({t:g}, bounds {T_BOUNDS})"}
    return {"temperature": t}


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.float() / temperature, labels))
