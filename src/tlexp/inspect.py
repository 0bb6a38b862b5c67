"""`python -m tlexp.inspect dataset=...`: what tlexp will train on, without training.

Classes and counts per split, imbalance, image sizes and modes, unreadable files with the reason, ignored
files, exact duplicates and leaks, structural problems; `report.json`, `samples.png` (a grid of images per
class after the eval transform) and `class_counts.png` in the run directory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import hydra
import matplotlib
import numpy as np
from omegaconf import DictConfig

from .backbones import create_backbone
from .data import TransferDataModule
from .errors import exit_on_user_error
from .train import build_datamodule, preprocessing

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("tlexp")


def inspect(cfg: DictConfig) -> dict:
    """Run every data check tlexp runs before training, collect the findings, draw the two figures."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    size_hint = (cfg.dataset.get("preprocess") or {}).get("image_size")
    backbone, _ = create_backbone(cfg.model.name, None, size_hint)  # preprocessing only: no weights needed
    pre = preprocessing(cfg, backbone)
    # every bad file listed instead of a stop at them; structural problems noted instead of raised
    dm = build_datamodule(cfg, pre, on_bad_image="skip", strict=False)
    dm.setup()
    checks, names = dm.checks, dm.class_names
    probes = [p for p in dm.probes.values() if not p.reason]
    report = {
        "dataset": cfg.dataset.name,
        "classes": names,
        "counts": {split: dict(zip(names, c, strict=True)) for split, c in checks["class_counts"].items()},
        "imbalance_ratio": checks["imbalance_ratio"],
        "modes": dict(Counter(p.mode for p in probes).most_common()),
        "sizes": dict(Counter(f"{p.width}x{p.height}" for p in probes).most_common(12)),
        "bad_files": checks["bad_files"],
        "ignored_files": checks["ignored_files"],
        "duplicates": checks["duplicates"],
        "leaks_removed": checks["leaks_removed"],
        "problems": checks["problems"],
        "preprocessing": pre,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_counts(report["counts"], out / "class_counts.png")
    plot_samples(dm, int(cfg.samples_per_class), out / "samples.png")
    print(format_report(report, out), flush=True)
    return report


def format_report(r: dict, out: Path) -> str:
    splits = list(r["counts"])
    width = max(len(n) for n in [*r["classes"], "class"])
    lines = [f"dataset {r['dataset']}: {len(r['classes'])} classes", ""]
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    for name in r["classes"]:
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{r['counts'][s][name]:>6}" for s in splits))
    lines.append(f"  {'total':<{width}}  " + "  ".join(f"{sum(r['counts'][s].values()):>6}" for s in splits))
    lines += ["", f"imbalance ratio (largest / smallest training class): {r['imbalance_ratio']:.2f}"]
    if r["modes"]:
        lines.append("image modes: " + ", ".join(f"{m} {n}" for m, n in r["modes"].items()))
        lines.append("image sizes: " + ", ".join(f"{s} {n}" for s, n in r["sizes"].items()))
    if r["ignored_files"]:
        lines.append("ignored: " + ", ".join(f"{n} {k}" for k, n in r["ignored_files"].items()))
    lines.append(f"unreadable files: {len(r['bad_files'])} (skipped with data.on_bad_image=skip)")
    lines += [f"  {b['path']}: {b['reason']}" for b in r["bad_files"]]
    lines.append(f"exact duplicates: {len(r['duplicates'])} group(s)")
    for group in r["duplicates"]:
        labels = {f["label"] for f in group["files"]}
        note = f"  <- different labels {sorted(labels)}" if len(labels) > 1 else ""
        lines.append("  " + " = ".join(f"{f['split']}:{f['path']}" for f in group["files"]) + note)
    lines.append(f"removed from val/test as copies of training images: {len(r['leaks_removed'])}")
    lines += [f"  {x['split']}: {x['path']}" for x in r["leaks_removed"]]
    if r["problems"]:
        lines.append(f"problems that stop training: {len(r['problems'])}")
        lines += [f"  - {p}" for p in r["problems"]]
    lines += ["", f"report.json, samples.png, class_counts.png in {out}"]
    return "\n".join(lines)


def plot_counts(counts: dict[str, dict[str, int]], path: Path) -> None:
    names = list(next(iter(counts.values())))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
    bar = 0.8 / len(counts)
    for k, (split, per_class) in enumerate(counts.items()):
        ax.bar(x + k * bar, [per_class[n] for n in names], bar, label=split)
    ax.set_xticks(x + bar * (len(counts) - 1) / 2, names, rotation=45, ha="right")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(dm: TransferDataModule, per_class: int, path: Path) -> None:
    """Up to `per_class` training images of each class, as the model sees them (eval transform, un-normalised)."""
    split = dm.splits.get("train") or dm.splits.get("pool")
    names, transform = dm.class_names, dm.eval_transform
    mean, std = np.asarray(dm.mean)[:, None, None], np.asarray(dm.std)[:, None, None]
    fig, axes = plt.subplots(len(names), per_class, figsize=(per_class * 1.2, len(names) * 1.3), squeeze=False)
    for c, name in enumerate(names):
        for k, i in enumerate(np.flatnonzero(split.labels == c)[:per_class]):
            pixels = transform(split.image(int(i))).numpy() * std + mean
            axes[c, k].imshow(np.clip(pixels.transpose(1, 2, 0), 0, 1))
        for ax in axes[c]:
            ax.axis("off")
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="inspect")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    inspect(cfg)


if __name__ == "__main__":
    main()
