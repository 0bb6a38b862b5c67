"""95% intervals for the figures tlexp prints: every accuracy and F1 says how far it can be off, and on how much.

One proportion (accuracy on n images): the Wilson score interval (scipy's `binomtest(...).proportion_ci`).
Macro F1, and the difference between two models on the same images: a seeded percentile bootstrap over images,
resampled in pairs (scipy's `stats.bootstrap`). A figure over seeds or folds: the mean with a t-interval.
The text form shows only the digits the interval supports: `0.93 [0.83, 0.97] on 60 images`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A figure with its 95% interval, the count it rests on and how the interval was made."""

    value: float
    low: float | None  # None: no interval can be given (one seed, no images)
    high: float | None
    n: int
    method: str  # wilson | bootstrap | t | none
    unit: str = "images"

    def as_dict(self) -> dict:
        row = asdict(self)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}

    @property
    def decimals(self) -> int:
        return decimals_for(self.low, self.high)

    def text(self, scale: float = 1.0, signed: bool = False, on: bool = True) -> str:
        """`0.93 [0.83, 0.97] on 60 images`; scale=100 for points, signed for differences."""
        d = max(0, self.decimals - (2 if scale == 100 else 0))
        sign = "+" if signed else ""

        def shown(x: float) -> str:
            return f"{round(x * scale, d) + 0.0:{sign}.{d}f}"  # + 0.0: a value that rounds to zero is not "-0"

        head = shown(self.value)
        if self.low is not None and self.high is not None:
            head += f" [{shown(self.low)}, {shown(self.high)}]"
        tail = f" on {self.n} {self.unit if self.n != 1 else self.unit.rstrip('s')}" if on else ""
        return head + tail

    def __str__(self) -> str:
        return self.text()

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def decimals_for(low: float | None, high: float | None) -> int:
    """One significant digit of the half-width: [0.83, 0.97] -> 2 decimals, [0.830, 0.844] -> 3 (2 to 4: a
    share printed with one decimal reads as a rounding slip, not as a wide interval)."""
    if low is None or high is None or not high > low:
        return 2
    return min(4, max(2, math.ceil(-math.log10((high - low) / 2))))


def wilson(correct: int, n: int) -> Interval:
    """Accuracy = correct / n with the Wilson score interval (good at small n and near 0 or 1)."""
    if n <= 0:
        return Interval(float("nan"), None, None, 0, "none")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return Interval(correct / n, float(ci.low), float(ci.high), int(n), "wilson")


def accuracy(labels, predicted) -> Interval:
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return wilson(int((labels == predicted).sum()), len(labels))


def macro_f1_score(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro F1 over the classes present in labels or predictions (a class with neither scores nothing)."""
    matrix = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    matrix = matrix.reshape(num_classes, num_classes)
    tp, support, said = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    present = (support + said) > 0
    f1 = np.divide(2 * tp, support + said, out=np.zeros(num_classes), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def bootstrap(statistic, *samples, seed: int = 0) -> Interval:
    """Percentile bootstrap of `statistic(*samples)`, the samples resampled together (paired) over images."""
    samples = [np.asarray(s) for s in samples]
    n = len(samples[0])
    value = float(statistic(*samples))
    if n < 2 or all(len(np.unique(s)) == 1 for s in samples):  # nothing varies: every resample gives the value
        return Interval(value, value if n else None, value if n else None, n, "bootstrap")
    result = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=RESAMPLES,
        confidence_level=LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Interval(value, float(ci.low), float(ci.high), n, "bootstrap")


def macro_f1(labels, predicted, num_classes: int, seed: int = 0) -> Interval:
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(labels) and (labels == predicted).all():
        # Every image right: every resample scores 1 too, an interval of no width. F1 cannot fall slower than
        # accuracy here, so the accuracy's Wilson bounds say how far below 1 it may plausibly be.
        right = wilson(len(labels), len(labels))
        return Interval(1.0, right.low, 1.0, len(labels), "wilson (every image right)")
    return bootstrap(lambda y, p: macro_f1_score(y, p, num_classes), labels, predicted, seed=seed)


def paired_difference(correct_a, correct_b, seed: int = 0) -> Interval:
    """acc(a) - acc(b) on the same images, from per-image verdicts, with a paired bootstrap interval."""
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    return bootstrap(np.mean, diff, seed=seed)


def mean(values, unit: str = "seeds", bounds: tuple[float, float] | None = (0.0, 1.0)) -> Interval:
    """The mean over seeds or folds with its t-interval (none from a single value), clipped to `bounds` (a
    share cannot leave 0..1, however few the folds; None for a difference)."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return Interval(float("nan"), None, None, 0, "none", unit)
    centre = float(values.mean())
    if len(values) < 2:
        return Interval(centre, None, None, 1, "none", unit)
    sem = float(stats.sem(values))
    if sem == 0:  # every value equal: no spread to make an interval from
        return Interval(centre, None, None, len(values), "none", unit)
    low, high = stats.t.interval(LEVEL, df=len(values) - 1, loc=centre, scale=sem)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(centre, float(low), float(high), len(values), "t", unit)


def of_logits(logits, labels, num_classes: int, seed: int = 0) -> dict[str, Interval]:
    """Accuracy (Wilson) and macro F1 (bootstrap) of a model's logits on one split."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(logits).argmax(1)
    return {"acc": accuracy(labels, predicted), "f1": macro_f1(labels, predicted, num_classes, seed)}
