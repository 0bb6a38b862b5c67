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

from tlexp.config.cli import precheck
from tlexp.config.errors import DataError, exit_on_user_error
from tlexp.config.validate import validate_config
from tlexp.data.sizes import shorter_sides, small_images
from tlexp.data.sources import IMAGE_EXTENSIONS, iter_files
from tlexp.model.backbones import create_backbone
from tlexp.run.atomic import atomic_path, write_text
from tlexp.run.build import build_datamodule, preprocessing

from .data import TransferDataModule

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("tlexp")


def inspect(cfg: DictConfig) -> dict:
    """Run every data check tlexp runs before training, collect the findings, draw the two figures."""
    validate_config(cfg)
    check_has_images(cfg.dataset)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    size_hint = (cfg.dataset.get("preprocess") or {}).get("image_size")
    backbone, _ = create_backbone(cfg.model.name, None, size_hint)  # preprocessing only: no weights needed
    pre = preprocessing(cfg, backbone)
    # every bad file listed instead of a stop at them; structural problems noted instead of raised
    dm = build_datamodule(cfg, pre, on_bad_image="skip", strict=False)
    _setup(dm)
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
        "warnings": [*checks["scan_warnings"], *filter(None, [small_images(shorter_sides(probes), pre.image_size)])],
        "preprocessing": pre.as_dict(),
    }
    write_text(out / "report.json", json.dumps(report, indent=2))
    print(format_report(report, out), flush=True)
    plot_counts(report["counts"], out / "class_counts.png")
    plot_samples(dm, int(cfg.samples_per_class), out / "samples.png")
    return report


def stop_if_training_would(report: dict, cfg: DictConfig) -> None:
    """A DataError (exit status 2) when the report lists a problem that would stop `tlexp.train`."""
    stopping = list(report["problems"])
    if cfg.data.on_bad_image == "error" and report["bad_files"]:
        stopping.append(f"{len(report['bad_files'])} unreadable file(s) with data.on_bad_image=error")
    if stopping:
        raise DataError(
            f"{len(stopping)} problem(s) that stop training (listed above, and in {cfg.output_dir}/report.json): "
            + "; ".join(stopping)
        )


def check_has_images(dataset: DictConfig) -> None:
    """An image folder must hold at least one image file somewhere, else nothing below can say what is wrong."""
    if dataset.get("source") != "imagefolder" or not dataset.get("root"):
        return
    root = Path(str(dataset.root)).expanduser()
    if not root.is_dir():
        return  # the source's own message says the folder does not exist
    files = (p for p in iter_files(root, []) if not p.name.startswith("."))  # linked folders too
    others = []
    for p in files:
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return
        if len(others) < 3:
            others.append(str(p.relative_to(root)))
    found = f" It holds other files, e.g. {', '.join(others)}." if others else " It holds no files."
    raise DataError(
        f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}).{found} Expected one "
        f"subfolder per class with images (e.g. {root}/cat/1.jpg, {root}/dog/2.jpg), or train/ val/ test/ "
        "subfolders that each hold the class folders."
    )


def _setup(dm: TransferDataModule) -> None:
    """dm.setup(); when the splits cannot be made from what is left (e.g. every file unreadable), the problems
    the scan noted are the message, not the KeyError or IndexError of the splitting."""
    try:
        dm.setup()
    except (KeyError, IndexError, ValueError) as err:
        noted = list(dm.source.problems) if dm.source is not None else []
        if not noted:
            raise
        raise DataError("cannot make train/val/test splits: " + "; ".join(noted)) from err


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
    if r["warnings"]:
        lines.append(f"warnings: {len(r['warnings'])}")
        lines += [f"  - {w}" for w in r["warnings"]]
    if r["problems"]:
        lines.append(f"problems that stop training: {len(r['problems'])}")
        lines += [f"  - {p}" for p in r["problems"]]
    lines.append("labels that look wrong: python -m tlexp.audit with the same overrides ranks them (docs/audit.md)")
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="inspect")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    stop_if_training_would(inspect(cfg), cfg)


if __name__ == "__main__":
    precheck("inspect")
    main()
