"""The learning curve: accuracy against training-set size, measured on nested subsets, fitted and extrapolated.

Measured: for each seed a chain of nested, stratified subsets of the training set (each holds the smaller ones, every
class in proportion); at each size a model is fitted on the subset and each val image gets a verdict (right or
wrong). Fitted: acc(n) = a - b * (n / n0)^(-c), a power law with an asymptote `a` (0 <= a <= 1, b >= 0,
0.05 <= c <= 3; n0 = the current training-set size), by weighted least squares over the mean accuracy of each size:
for fixed c the model is linear in (a, b), so c is profiled over a fine grid and the best grid point refined with
scipy's `curve_fit` (bounded). Intervals: a bootstrap that resamples, in each replicate, the val images (within each
class: the same draw for every size, since one val set scores them all) and the seeds at each size, then refits;
a forecast's interval is the central `level` share of the replicates' forecasts. Per class, the same on that class's
val images (recall). Power-law extrapolation can misjudge how many images a target needs (Mahmood et al., CVPR
2022): the intervals say how far the data let the forecast move, and the plan says when they are too wide to use.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import OptimizeWarning, curve_fit

from tlexp.features.probe import L2_GRID, _fit

C_BOUNDS = (0.05, 3.0)  # the exponent: below 0.05 the curve is a straight line in log n, above 3 it is flat already
C_GRID = np.geomspace(*C_BOUNDS, 160)
MIN_SIGMA = 0.003  # a size whose seeds agree exactly still carries the val set's noise


def nested_subsets(labels, fractions, seed: int) -> list[np.ndarray]:
    """Index sets of the training images for each fraction (ascending), nested and stratified.

    Each class is shuffled once (seeded), and fraction f takes the first round(f x class size) of it, at least one
    image: a larger fraction holds every image of a smaller one, and every class keeps its share."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 104729])
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chain = []
    for f in sorted(fractions):
        taken = [idx[: min(len(idx), max(1, math.floor(f * len(idx) + 0.5)))] for idx in order]
        chain.append(np.sort(np.concatenate(taken)))
    return chain


def saturating(n, a: float, b: float, c: float, n0: float = 1.0):
    """acc(n) = a - b * (n / n0)^(-c): rises with n, towards the asymptote a."""
    return a - b * np.power(np.asarray(n, dtype=float) / n0, -c)


@dataclass
class Measured:
    """Per-image verdicts of each size's models: correct[i] is [seeds, val images] (bool) for sizes[i]."""

    sizes: list[int]
    correct: list[np.ndarray]
    val_labels: np.ndarray
    seconds: float = 0.0

    def __post_init__(self):
        self.correct = [np.atleast_2d(np.asarray(c, dtype=bool)) for c in self.correct]
        self.val_labels = np.asarray(self.val_labels)

    @property
    def n0(self) -> int:
        return int(self.sizes[-1])

    def values(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Mean accuracy (recall, with a class mask) over seeds, per size."""
        return np.array([c[:, mask].mean() if mask is not None else c.mean() for c in self.correct])

    def per_seed(self, mask: np.ndarray | None = None) -> list[np.ndarray]:
        return [c[:, mask].mean(1) if mask is not None else c.mean(1) for c in self.correct]


@dataclass
class Curve:
    """A fitted curve, its bootstrap replicates and what they say at any size."""

    a: float
    b: float
    c: float
    n0: int
    sizes: list[int]
    measured: list[float]  # mean over seeds per size
    measured_low: list[float]  # the bootstrap interval of each measured mean
    measured_high: list[float]
    boot: np.ndarray = field(repr=False)  # [replicates, 3]: a, b, c of each refit
    level: float = 0.9

    def at(self, n) -> float:
        return float(np.clip(saturating(n, self.a, self.b, self.c, self.n0), 0, 1))

    def _boot_at(self, n) -> np.ndarray:
        a, b, c = self.boot.T
        return np.clip(a - b * np.power(float(n) / self.n0, -c), 0, 1)

    def forecast(self, n) -> tuple[float, float, float]:
        """(value, low, high) at n images: the fit, and the central `level` share of the refits."""
        low, high = quantiles(self._boot_at(n), self.level)
        return self.at(n), low, high

    def gain(self, n_from, n_to) -> tuple[float, float, float]:
        """(value, low, high) of acc(n_to) - acc(n_from), paired within each refit."""
        low, high = quantiles(self._boot_at(n_to) - self._boot_at(n_from), self.level)
        return self.at(n_to) - self.at(n_from), low, high

    def asymptote(self) -> tuple[float, float, float]:
        low, high = quantiles(self.boot[:, 0], self.level)
        return self.a, low, high

    def images_for(self, target: float) -> tuple[float, float, float]:
        """(value, low, high): training images at which the curve reaches `target`; inf where it never does."""
        low, high = quantiles(images_for(self.boot.T, target, self.n0), self.level)
        return float(images_for(np.array([[self.a], [self.b], [self.c]]), target, self.n0)[0]), low, high

    def as_dict(self, replicates: bool = False) -> dict:
        """The fit, its points and (replicates=True) every refit's (a, b, c): enough to forecast at any size."""
        found = {
            "formula": "acc(n) = a - b * (n / n0)^(-c)",
            "a": round(self.a, 5),
            "b": round(self.b, 5),
            "c": round(self.c, 4),
            "n0": self.n0,
            "level": self.level,
            "asymptote": _rounded(self.asymptote()),
            "replicates": len(self.boot),
            "points": [
                {"n": n, "acc": round(m, 4), "low": round(lo, 4), "high": round(hi, 4)}
                for n, m, lo, hi in zip(self.sizes, self.measured, self.measured_low, self.measured_high, strict=True)
            ],
        }
        if replicates:
            found["refits"] = np.round(self.boot, 5).tolist()
        return found

    @classmethod
    def from_dict(cls, d: dict) -> Curve:
        """The curve `as_dict(replicates=True)` wrote (plan.json), to forecast at other sizes."""
        points = d["points"]
        column = {k: [p[k] for p in points] for k in ("n", "acc", "low", "high")}
        return cls(d["a"], d["b"], d["c"], d["n0"], column["n"], column["acc"], column["low"], column["high"],
                   np.asarray(d["refits"]), d["level"])  # fmt: skip


def images_for(params: np.ndarray, target: float, n0: float) -> np.ndarray:
    """n with a - b (n/n0)^-c = target, per column of params [3, k]; inf where a <= target (never reached)."""
    a, b, c = (np.asarray(p, dtype=float) for p in params)
    out = np.full(a.shape, np.inf)
    reach = a > target
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.power(np.where(b > 0, b, 0.0) / np.where(reach, a - target, 1.0), 1.0 / c)
    out[reach] = np.maximum(x[reach], 0.0) * n0
    return out


def quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` share of `values` (inf allowed: a target some refits never reach); NaNs dropped."""
    v = np.sort(np.asarray(values, dtype=float)[~np.isnan(values)])
    if len(v) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low = v[max(0, math.floor(tail * (len(v) - 1)))]
    high = v[min(len(v) - 1, math.ceil((1 - tail) * (len(v) - 1)))]
    return float(low), float(high)


def _rounded(t) -> list[float]:
    return [round(x, 4) if math.isfinite(x) else None for x in t]


# ---------------------------------------------------------------- the fit


def profile_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares fit of y = a - b x^-c for every row of y [k, sizes]: (a, b, c) [k, 3].

    For fixed c the model is linear in (a, b): solved in closed form with 0 <= a <= 1 and b >= 0 (when the
    unconstrained fit breaks a bound, the bound is set and the other parameter refitted), over the grid of c."""
    y = np.atleast_2d(y)
    w = w / w.sum()
    best = np.full((len(y), 4), np.inf)  # sse, a, b, c
    for c in C_GRID:
        z = np.power(x, -c)
        zm, ym = (w * z).sum(), y @ w
        szz = (w * (z - zm) ** 2).sum()
        b = -(((y - ym[:, None]) * (z - zm)) @ w) / szz  # y = a - b z
        a = ym + b * zm
        flat = b <= 0  # a falling curve: the best rising one is flat, at the mean
        b = np.where(flat, 0.0, b)
        a = np.where(flat, ym, a)
        over = a > 1  # the asymptote held at 1: b refitted with a = 1
        b = np.where(over, np.maximum(0.0, ((1 - y) * z) @ w / (w * z * z).sum()), b)
        a = np.where(over, 1.0, np.maximum(a, 0.0))
        sse = ((y - (a[:, None] - b[:, None] * z)) ** 2) @ w
        better = sse < best[:, 0] - 1e-15
        best[better] = np.stack([sse, a, b, np.full_like(a, c)], 1)[better]
    return best[:, 1:]


def refine(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The profile fit's optimum polished by scipy's bounded `curve_fit`; the start if that fails or is worse."""
    lo, hi = [0.0, 0.0, C_BOUNDS[0]], [1.0, np.inf, C_BOUNDS[1]]
    p0 = np.clip(start, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # a covariance it cannot estimate: not used here
            found, _ = curve_fit(lambda x, a, b, c: a - b * np.power(x, -c), x, y, p0=p0, sigma=sigma, bounds=(lo, hi))
    except (RuntimeError, ValueError):
        return start

    def sse(p):
        return float((((y - saturating(x, *p)) / sigma) ** 2).sum())

    return found if sse(found) <= sse(start) else start


def fit(measured: Measured, replicates: int = 500, level: float = 0.9, seed: int = 0, mask=None) -> Curve:
    """The curve of mean accuracy (recall on the val images in `mask`) against size, with bootstrap replicates."""
    x = np.asarray(measured.sizes, dtype=float) / measured.n0
    keep = np.ones(len(measured.val_labels), bool) if mask is None else np.asarray(mask, bool)
    y = measured.values(keep)
    sigma = point_sigma(measured, keep)
    start = profile_fit(x, y, 1 / sigma**2)[0]
    a, b, c = refine(x, y, sigma, start)
    boot = bootstrap_values(measured, keep, replicates, seed)
    params = profile_fit(x, boot, 1 / sigma**2)
    low, high = zip(*(quantiles(boot[:, i], level) for i in range(len(x))), strict=True)
    return Curve(float(a), float(b), float(c), measured.n0, list(measured.sizes), [float(v) for v in y],
                 list(low), list(high), params, level)  # fmt: skip


def point_sigma(measured: Measured, keep: np.ndarray) -> np.ndarray:
    """Each size's noise: the standard error of its mean over seeds, and at least a share of the val set's own."""
    n_val = int(keep.sum())
    sigmas = []
    for acc in measured.per_seed(keep):
        p = float(np.clip(acc.mean(), 0.02, 0.98))
        seeds = acc.std(ddof=1) / math.sqrt(len(acc)) if len(acc) > 1 else 0.0
        sigmas.append(max(MIN_SIGMA, seeds, 0.5 * math.sqrt(p * (1 - p) / max(n_val, 1))))
    return np.asarray(sigmas)


def bootstrap_values(measured: Measured, keep: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """[replicates, sizes]: each replicate's mean accuracy per size, val images resampled within each class (one
    draw for all sizes) and seeds resampled at each size."""
    rng = np.random.default_rng([int(seed), 31337])
    labels = measured.val_labels[keep]
    counts = np.zeros((replicates, len(labels)))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=replicates)
    counts /= len(labels)
    out = np.empty((replicates, len(measured.sizes)))
    for i, correct in enumerate(measured.correct):
        per_seed = counts @ correct[:, keep].T.astype(float)  # [replicates, seeds]
        seeds = correct.shape[0]
        draws = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=replicates) / seeds
        out[:, i] = (per_seed * draws).sum(1)
    return out


# ---------------------------------------------------------------- the probe's points


def halves(labels, seed: int = 0) -> np.ndarray:
    """0 or 1 for each val image: two stratified, seeded halves (one chooses the probe's L2, the other is scored)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 7])
    half = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        half[members[1::2]] = 1
    return half


def probe_verdicts(train, val, num_classes: int, half: np.ndarray, grid=L2_GRID) -> np.ndarray:
    """Which val images the linear probe fitted on `train` gets right, each half scored with the L2 chosen on the
    other half (best accuracy, ties to the lower log-loss), so that no verdict comes from a choice it took part in.

    The probe of features/probe.py (standardised features, L-BFGS, warm-started from strong to weak L2), each L2
    fitted once: the two halves only choose among the same fits."""
    (xtr, ytr), (xva, yva) = train, val
    mean, std = xtr.double().mean(0), xtr.double().std(0).nan_to_num(1.0).clamp_min(1e-6)
    xtr, xva = ((x.double() - mean) / std for x in (xtr, xva))
    ytr, yva = torch.as_tensor(ytr), torch.as_tensor(yva)
    right, losses, init = [], [], None
    with torch.enable_grad():
        for l2 in sorted(grid, reverse=True):
            init = _fit(xtr, ytr, num_classes, l2, init)
            logits = xva @ init[0] + init[1]
            right.append((logits.argmax(1) == yva).numpy())
            losses.append(F.cross_entropy(logits, yva, reduction="none").detach().numpy())
    return cross_choose(np.stack(right), np.stack(losses), half)  # [grid, val images] each


def cross_choose(right: np.ndarray, loss: np.ndarray | None, half: np.ndarray) -> np.ndarray:
    """Verdicts per val image from candidates' verdicts `right` [candidates, images] (L2 values, epochs): each half
    gets the candidate the other half scores best (accuracy; ties to the lower mean `loss`, else the earliest)."""
    half = np.asarray(half)
    verdicts = np.zeros(right.shape[1], dtype=bool)
    for h in (0, 1):
        chooser, scored = half != h, half == h
        acc = right[:, chooser].mean(1)
        tied = np.flatnonzero(acc == acc.max())
        best = tied[0] if loss is None else min(tied, key=lambda k: loss[k, chooser].mean())
        verdicts[scored] = right[best, scored]
    return verdicts


def measure_probe(train, val, num_classes: int, fractions, seeds: int, seed: int = 0) -> Measured:
    """The probe's verdicts at each nested subset size, over `seeds` chains of subsets (the full set once)."""
    started = time.perf_counter()
    x, y = train
    half = halves(val[1], seed)
    chains = [nested_subsets(y.numpy(), fractions, seed + s) for s in range(seeds)]
    sizes = [len(idx) for idx in chains[0]]
    correct = []
    for i, n in enumerate(sizes):
        if n == len(y):  # every chain's subset is the whole set: one fit, the same verdicts for every seed
            whole = probe_verdicts(train, val, num_classes, half)
            correct.append(np.repeat(whole[None], seeds, 0))
            continue
        rows = []
        for chain in chains:
            idx = torch.as_tensor(chain[i])
            rows.append(probe_verdicts((x[idx], y[idx]), val, num_classes, half))
        correct.append(np.stack(rows))
    return Measured(sizes, correct, val[1].numpy(), seconds=time.perf_counter() - started)
