"""The comparison plots (matplotlib, no display needed): one panel per dataset x training-set size.

Accuracy is drawn with its 95% interval: a run's own (Wilson on its test images), a mean's over seeds or folds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tlexp.evaluation import intervals  # noqa: E402
from tlexp.run.atomic import atomic_path  # noqa: E402

COLOURS = {
    "scratch": "tab:red", "feature_extraction": "tab:blue", "finetune": "tab:green", "gradual": "tab:purple",
    "lp_ft": "tab:orange", "auto": "black",
}  # fmt: skip


def _colour(strategy: str) -> str:
    return COLOURS.get(strategy, "tab:gray")


def _style(strategy: str) -> dict:
    """auto continues one of the others, so it often lies on top of it: drawn dotted, with crosses, to show."""
    dotted = {"linestyle": ":", "marker": "x", "markersize": 7} if strategy == "auto" else {}
    return {"color": _colour(strategy), **dotted}


def _cell(row: dict) -> tuple[str, int, int]:
    """A run's (or a summary row's) panel: dataset, training-set size (a fold's cell size) and folds (0: none)."""
    return row.get("dataset", ""), row.get("cell_images", row["train_images"]), row.get("folds") or 0


def _cells(rows) -> list[tuple[str, int, int]]:
    return sorted({_cell(r) for r in rows})


def _title(cell: tuple[str, int, int]) -> str:
    dataset, size, folds = cell
    where = f"{dataset + ', ' if dataset else ''}"
    return f"{where}{size} training images" if not folds else f"{where}~{size} training images, {folds}-fold CV"


def _yerr(points: list[dict], key: str) -> list[list[float]]:
    """Asymmetric error bars in points from each row's `<key>` and its `<key>_low` / `_high` (none where unknown)."""
    below, above = [], []
    for p in points:
        value, low, high = p.get(key), p.get(f"{key}_low"), p.get(f"{key}_high")
        known = value is not None and low is not None and high is not None
        below.append(100 * max(0.0, value - low) if known else 0.0)
        above.append(100 * max(0.0, high - value) if known else 0.0)
    return [below, above]


def _in(rows, cell, strategy) -> list[dict]:
    return [r for r in rows if _cell(r) == cell and r["strategy"] == strategy]


def _axes(n: int, width: float = 5.0):
    columns = min(n, 3)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns + 2.2, 4 * rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    """One legend for the whole figure, outside the panels, so that it never covers data."""
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path | None:
    """Test accuracy against fit time: one point per run with its Wilson interval, one colour per strategy, one
    panel per cell."""
    if not rows:
        return None
    cells = _cells(rows)
    fig, axes = _axes(len(cells))
    for ax, cell in zip(axes, cells, strict=True):
        for strategy in sorted({r["strategy"] for r in rows}):
            rs = _in(rows, cell, strategy)
            if rs:
                ax.errorbar([r["fit_seconds"] / 60 for r in rs], [100 * r["test_acc"] for r in rs],
                            yerr=_yerr(rs, "test_acc"), fmt="o", capsize=2, elinewidth=0.8, label=strategy,
                            color=_colour(strategy), markersize=6, alpha=0.8)  # fmt: skip
        ax.set(xlabel="fit time (min)", ylabel="test accuracy (%), 95% interval", title=_title(cell))
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_learning_curves(rows: list[dict], path: Path) -> Path | None:
    """Validation accuracy per epoch (the mean over a cell's runs, said in the title) with its 95% band (the
    t-interval over the runs; one run: Wilson on its val images), phase changes dashed."""
    rows = [r for r in rows if r.get("history")]
    if not rows:
        return None
    cells = _cells(rows)
    fig, axes = _axes(len(cells), width=6.0)
    for ax, cell in zip(axes, cells, strict=True):
        most = 1
        for strategy in sorted({r["strategy"] for r in rows}):
            rs = _in(rows, cell, strategy)
            if not rs:
                continue
            most = max(most, len(rs))
            per_epoch = defaultdict(list)
            for r in rs:
                for h in r["history"]:
                    if "val/acc" in h:
                        per_epoch[h["epoch"]].append(h["val/acc"])
            epochs = sorted(per_epoch)
            ax.plot([e + 1 for e in epochs], [100 * sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs],
                    label=strategy, **_style(strategy))  # fmt: skip
            bands = [_band(per_epoch[e], rs[0].get("val_n")) for e in epochs]
            shown = [(e + 1, b) for e, b in zip(epochs, bands, strict=True) if b is not None]
            if shown:
                ax.fill_between([e for e, _ in shown], [100 * b[0] for _, b in shown], [100 * b[1] for _, b in shown],
                                color=_colour(strategy), alpha=0.12, linewidth=0)  # fmt: skip
            boundary = 0
            for n in rs[0]["phase_epochs"][:-1]:
                boundary += n
                ax.axvline(boundary + 0.5, color=_colour(strategy), linestyle="--", alpha=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        mean = f"mean of up to {most} runs per line, " if most > 1 else ""
        title = f"{_title(cell)}\n({mean}band: 95% interval, dashed: phase change)"
        ax.set(xlabel="epoch", ylabel="val accuracy (%)", title=title)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _band(values: list[float], val_n: int | None) -> tuple[float, float] | None:
    """The 95% band at one epoch: the t-interval over the runs, or one run's Wilson interval on its val images."""
    if len(values) > 1:
        iv = intervals.mean(values, unit="runs")
    elif val_n:
        iv = intervals.wilson(round(values[0] * val_n), val_n)
    else:
        return None
    return (max(0.0, iv.low), min(1.0, iv.high)) if iv.low is not None and iv.high is not None else None


def plot_accuracy_vs_size(summary: list[dict], path: Path, thresholds=(500, 2000)) -> Path | None:
    """Test accuracy against training-set size per strategy (datasets with several sizes), error bars the 95%
    interval (over seeds or folds; one run: its Wilson interval), the size rule's thresholds dotted, auto's picks
    written beside its points."""

    def panel(s: dict) -> tuple[str, int]:
        return s["dataset"], s.get("folds") or 0

    datasets = sorted({panel(s) for s in summary if len({t["train_images"] for t in summary
                                                         if panel(t) == panel(s)}) > 1})  # fmt: skip
    if not datasets:
        return None
    fig, axes = _axes(len(datasets), width=6.5)
    for ax, (dataset, folds) in zip(axes, datasets, strict=True):
        here = [s for s in summary if panel(s) == (dataset, folds)]
        for strategy in sorted({s["strategy"] for s in here}):
            ss = sorted((s for s in here if s["strategy"] == strategy), key=lambda s: s["train_images"])
            ax.errorbar([s["train_images"] for s in ss], [100 * s["test_acc_mean"] for s in ss],
                        yerr=_yerr([{**s, "test_acc": s["test_acc_mean"]} for s in ss], "test_acc"), capsize=3,
                        label=strategy, **{"marker": "o", **_style(strategy)})  # fmt: skip
            for s in ss:
                if s.get("picked"):
                    picks = ", ".join(f"{name} x{n}" for name, n in s["picked"].items())
                    ax.annotate(f"auto: {picks}", (s["train_images"], 100 * s["test_acc_mean"]), fontsize=7,
                                xytext=(4, -12), textcoords="offset points")  # fmt: skip
        for t in thresholds:
            ax.axvline(t, color="gray", linestyle=":")
            ax.text(t, ax.get_ylim()[0], f" size rule: {t}", color="gray", fontsize=8, va="bottom")
        ax.set_xscale("log")
        cv = f", {folds}-fold CV" if folds else ""
        title = f"{dataset}{cv}: where the strategies cross (bars: 95% interval)"
        ax.set(xlabel="training images", ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
