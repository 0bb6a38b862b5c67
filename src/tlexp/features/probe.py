"""Linear probe: L-BFGS multinomial logistic regression on cached features (Kornblith et al. 2019).

A strong, very fast baseline for feature_extraction: the L2 strength is chosen on the val split from a
log-spaced grid, the model is fitted on the train split only (as the trained heads are), then tested once.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tlexp.model.metrics import classification_metrics

L2_GRID = tuple(10.0**k for k in range(-6, 3))  # 1e-6 .. 1e2; Kornblith et al. use 45 values over 1e-6 .. 1e5


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, init=None, max_iter: int = 200):
    """Minimise mean cross entropy + l2 * ||W||^2 (bias unpenalised) with full-batch L-BFGS."""
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype) if init is None else init[0].clone()
    b = torch.zeros(num_classes, dtype=x.dtype) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_probe(train, val, num_classes: int, grid=L2_GRID) -> dict:
    """The probe on (features, labels) pairs: weights for raw features, the L2 chosen on val, its val accuracy."""
    (xtr, ytr), (xva, yva) = train, val
    # Standardise with train statistics: one L2 grid then suits every backbone's feature scale.
    mean, std = xtr.double().mean(0), xtr.double().std(0).clamp_min(1e-6)
    xtr, xva = ((x.double() - mean) / std for x in (xtr, xva))
    fits, init = [], None
    with torch.enable_grad():
        for l2 in sorted(grid, reverse=True):  # strong to weak, each warm-started from the last
            init = _fit(xtr, ytr, num_classes, l2, init)
            logits = xva @ init[0] + init[1]
            val_acc = (logits.argmax(1) == yva).double().mean().item()
            fits.append((l2, val_acc, float(F.cross_entropy(logits, yva)), init))
    # Best val accuracy; a small val set ties often, and then the val log-loss still tells the fits apart.
    top = max(f[1] for f in fits)
    tied = [f for f in fits if f[1] == top]
    l2, val_acc, val_loss, (w, b) = min(tied, key=lambda f: f[2])
    # Fold the standardisation in: ((x - mean) / std) @ w + b == x @ (w / std) + (b - (mean / std) @ w).
    weight, bias = w / std[:, None], b - (mean / std) @ w
    return {
        "weight": weight.T.float(),
        "bias": bias.float(),
        "l2": l2,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "tied_on_val_acc": len(tied),  # > 1: the choice rested on the val log-loss
    }


def linear_probe(train, val, test, num_classes: int, grid=L2_GRID) -> dict:
    """train/val/test: (features, labels) pairs. Returns the test metrics, the chosen L2 and the wall time."""
    started = time.perf_counter()
    fitted = fit_probe(train, val, num_classes, grid)
    xte, yte = test
    logits = xte.float() @ fitted["weight"].T + fitted["bias"]
    test_metrics = {k: float(v) for k, v in classification_metrics(num_classes)(logits, yte).items()}
    test_metrics["loss"] = float(F.cross_entropy(logits, yte))
    return {
        "test": test_metrics,
        "val_acc": fitted["val_acc"],
        "l2": fitted["l2"],
        "l2_tied_on_val_acc": fitted["tied_on_val_acc"],
        "l2_grid": list(grid),
        "seconds": round(time.perf_counter() - started, 2),
    }


def set_head_to_probe(linear: torch.nn.Linear, train, val, num_classes: int) -> dict:
    """LP-FT's first step (Kumar et al. 2022): set a linear head to the probe fitted on frozen features."""
    started = time.perf_counter()
    fitted = fit_probe(train, val, num_classes)
    with torch.no_grad():
        linear.weight.copy_(fitted["weight"])
        linear.bias.copy_(fitted["bias"])
    return {
        "l2": fitted["l2"],
        "l2_tied_on_val_acc": fitted["tied_on_val_acc"],
        "val_acc": round(fitted["val_acc"], 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
