"""The comparison plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_path  # noqa: E402

COLOURS = {"scratch": "tab:red", "feature_extraction": "tab:blue", "finetune": "tab:green", "gradual": "tab:purple"}


def _colour(strategy: str) -> str:
    return COLOURS.get(strategy.split(" ")[0] if not strategy.startswith("auto") else strategy, "tab:gray")


def _sizes(rows) -> list[int]:
    return sorted({r["train_images"] for r in rows})


def _axes(n: int, width: float = 5.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4), squeeze=False)
    return fig, axes[0]


def _save(fig, legend_ax, path: Path) -> Path:
    legend_ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path | None:
    """Test accuracy against training wall time: one point per run, one colour per strategy."""
    if not rows:
        return None
    sizes = _sizes(rows)
    fig, axes = _axes(len(sizes))
    for ax, size in zip(axes, sizes, strict=True):
        for strategy in sorted({r["strategy"] for r in rows}):
            rs = [r for r in rows if r["strategy"] == strategy and r["train_images"] == size]
            if rs:
                ax.scatter([r["fit_seconds"] / 60 for r in rs], [100 * r["test_acc"] for r in rs],
                           label=strategy, color=_colour(strategy), s=40, alpha=0.8)  # fmt: skip
        ax.set(xlabel="training wall time (min)", ylabel="test accuracy (%)", title=f"{size} training images")
        ax.grid(alpha=0.3)
    return _save(fig, axes[0], path)


def plot_learning_curves(rows: list[dict], path: Path) -> Path | None:
    """Validation accuracy per epoch (mean over seeds), phase boundaries as dashed lines."""
    rows = [r for r in rows if r.get("history")]
    if not rows:
        return None
    sizes = _sizes(rows)
    fig, axes = _axes(len(sizes), width=6.0)
    for ax, size in zip(axes, sizes, strict=True):
        for strategy in sorted({r["strategy"] for r in rows}):
            rs = [r for r in rows if r["strategy"] == strategy and r["train_images"] == size]
            if not rs:
                continue
            per_epoch = defaultdict(list)
            for r in rs:
                for h in r["history"]:
                    if "val/acc" in h:
                        per_epoch[h["epoch"]].append(h["val/acc"])
            epochs = sorted(per_epoch)
            ax.plot([e + 1 for e in epochs], [100 * sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs],
                    label=strategy, color=_colour(strategy))  # fmt: skip
            boundary = 0
            for n in rs[0]["phase_epochs"][:-1]:
                boundary += n
                ax.axvline(boundary + 0.5, color=_colour(strategy), linestyle="--", alpha=0.5)
        ax.set(xlabel="epoch", ylabel="val accuracy (%)", title=f"{size} training images (dashed: phase change)")
        ax.grid(alpha=0.3)
    return _save(fig, axes[0], path)


def plot_accuracy_vs_size(summary: list[dict], path: Path, thresholds=(500, 2000)) -> Path | None:
    """Test accuracy against training-set size per strategy, with the size rule's thresholds marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for strategy in sorted({s["strategy"] for s in summary}):
        ss = sorted((s for s in summary if s["strategy"] == strategy), key=lambda s: s["train_images"])
        ax.errorbar([s["train_images"] for s in ss], [100 * s["test_acc_mean"] for s in ss],
                    yerr=[100 * s["test_acc_std"] for s in ss], marker="o", capsize=3,
                    label=strategy, color=_colour(strategy))  # fmt: skip
    for t in thresholds:
        ax.axvline(t, color="gray", linestyle=":")
        ax.text(t, ax.get_ylim()[0], f" size rule: {t}", color="gray", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.set(xlabel="training images", ylabel="test accuracy (%)", title="Where the strategies cross over")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, ax, path)
