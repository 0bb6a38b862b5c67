"""`python -m tlexp.audit dataset=...`: which train + val images look mislabelled, ranked, without training.

1. The frozen backbone's eval-view features of train + val, through the feature cache (seconds when cached).
2. Out-of-fold probabilities of every train + val image (`features/out_of_fold.py`): K stratified, seeded folds
   (`cv.folds`, 0 = 5; `cv.repeats` averages new shuffles), each fold predicted by the linear probe fitted on the
   other folds alone, so no image is predicted by a model that saw it (the probe's L2 is chosen on val once).
3. Confident learning (`cleanlab`) flags the images whose given label those probabilities contradict, most
   suspect first (`evaluation/suspects.py`).
4. `audit.csv`, `out_of_fold.csv`, `exclude.txt`, `suspects.png` and `audit.json` in `out`; a summary, and the
   command that trains without the flagged images (`data.exclude=`). Test is never read.
The audit sits beside `tlexp.inspect`'s findings (exact duplicates with different labels are named here too).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlexp.config.cli import precheck
from tlexp.config.errors import ConfigError, exit_on_user_error
from tlexp.config.validate import check_writable
from tlexp.evaluation import intervals
from tlexp.evaluation.suspects import (
    audit_rows,
    find_suspects,
    suspects_picture,
    write_audit,
    write_exclude,
    write_out_of_fold,
)
from tlexp.features.cache import eval_feature_cache
from tlexp.features.out_of_fold import DEFAULT_FOLDS, out_of_fold
from tlexp.model.backbones import create_backbone
from tlexp.run.atomic import write_text
from tlexp.run.build import build_datamodule, check_config, image_size_hint, plain, preprocessing, set_threads

log = logging.getLogger("tlexp")
SHOWN_IN_SUMMARY = 10  # suspects listed on the console (audit.csv holds them all)
AUDIT_KEYS = ("out", "audit", "cv", "data.exclude")  # not passed on to the printed train command


def audit(cfg: DictConfig) -> dict:
    """Features, out-of-fold probabilities, confident learning, the files; returns what audit.json holds."""
    started = time.perf_counter()
    check_config(cfg)  # every key, the model name, the dataset's folder, the cache folder: before any work
    out = output_dir(cfg)
    check_writable(out, "Pass out=<a writable folder>.")
    set_threads(cfg)
    if str(cfg.model.weights).lower() in ("none", "random", "null"):
        raise ConfigError("the audit predicts with the pretrained backbone's features: set model.weights (not none).")
    backbone, _ = create_backbone(cfg.model.name, cfg.model.weights, image_size_hint(cfg))
    pre = preprocessing(cfg, backbone)
    # Features use the eval transform, normalised in the loader, whatever data.augment_on says for training; the
    # plain train/val split (cv.fold would make one fold the val split: the audit deals its own folds).
    dm = build_datamodule(cfg, pre, augment_on="cpu", cv=None)
    dm.setup()
    cache = eval_feature_cache(plain(cfg.cache), dm, backbone, cfg.model.name)
    train, val = cache.features("train"), cache.features("val")  # never test
    feature_seconds = time.perf_counter() - started
    names = dm.class_names
    folds = int(cfg.cv.folds) or DEFAULT_FOLDS
    oof = out_of_fold(train, val, len(names), folds, int(cfg.cv.repeats), seed=int(cfg.seed))
    ids = [*image_ids(dm.splits["train"], "train", cfg), *image_ids(dm.splits["val"], "val", cfg)]
    splits = ["train"] * len(train[1]) + ["val"] * len(val[1])
    labels, probs, fold_of = oof.labels.numpy(), oof.probs.numpy(), oof.folds.numpy()
    found = find_suspects(labels, probs, cfg.audit.filter_by, cfg.audit.rank_by)
    rows = audit_rows(ids, splits, labels, probs, fold_of, names, found)
    write_audit(out, rows)
    write_out_of_fold(out, ids, splits, labels, probs, fold_of, names, found)
    write_exclude(out, rows)
    shown = rows[: int(cfg.audit.show)]
    (out / "suspects.png").unlink(missing_ok=True)  # an earlier audit's picture in this folder is not this one's
    if shown:
        pictures = [image_at(dm, int(i), len(train[1])) for i in found.order[: len(shown)]]
        suspects_picture(out / "suspects.png", pictures, shown)
    agree = intervals.accuracy(labels, probs.argmax(1))
    summary = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "classes": names,
        "images": {"train": len(train[1]), "val": len(val[1])},
        "flagged": len(rows),
        "flagged_by_split": {s: sum(r["split"] == s for r in rows) for s in ("train", "val")},
        "folds": int(oof.folds[0].max()) + 1,
        "repeats": len(oof.folds),
        "seed": int(cfg.seed),
        "l2": oof.l2,
        "out_of_fold_accuracy": agree.as_dict(),
        "filter_by": cfg.audit.filter_by,
        "rank_by": cfg.audit.rank_by,
        "notes": oof.notes,
        "conflicting_duplicates": conflicting_duplicates(dm.checks.get("duplicates", [])),
        "features": {"computed": cache.computed, "loaded": cache.loaded},
        "seconds": {"features": round(feature_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "train_command": train_command(out / "exclude.txt"),
    }
    write_text(out / "audit.json", json.dumps(summary, indent=2))
    print(format_summary(summary, rows, agree, out, bool(cfg.data.get("exclude"))), flush=True)
    return summary


def output_dir(cfg: DictConfig) -> Path:
    """`out`, resolved once (its default holds the time: a second read could name the next second)."""
    if cfg.get("out"):
        return Path(str(cfg.out)).expanduser()
    return Path("outputs/audit") / f"{datetime.now():%Y-%m-%d/%H-%M-%S}_{cfg.dataset.name}"


def image_ids(images, split: str, cfg: DictConfig) -> list[str]:
    """Each image's stable name as data.exclude reads it: its path, or `<source>:<split>:<index>` in memory."""
    try:
        return list(images.ids())
    except (AttributeError, NotImplementedError):  # an ImageSet without ids(): its paths, else its position
        paths = getattr(images, "paths", None)
        return list(paths) if paths is not None else [f"{cfg.dataset.name}:{split}:{i}" for i in range(len(images))]


def image_at(dm, index: int, n_train: int):
    """The stored image (no transform) of train + val position `index`."""
    split, i = ("train", index) if index < n_train else ("val", index - n_train)
    return dm.splits[split].image(i)


def conflicting_duplicates(groups: list[dict]) -> int:
    """Exact-duplicate groups (inspect's finding) whose copies carry different labels."""
    return sum(len({f["label"] for f in g["files"]}) > 1 for g in groups)


def train_command(exclude: Path) -> str:
    """`python -m tlexp.train` with the user's overrides (less the audit's own keys) and data.exclude=<list>."""
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keys = [o.lstrip("+~").split("=", 1)[0] for o in given]
    kept = [o for o, k in zip(given, keys, strict=True) if not any(k == a or k.startswith(f"{a}.") for a in AUDIT_KEYS)]
    return shlex.join(["python", "-m", "tlexp.train", *kept, f"data.exclude={exclude}"])


def format_summary(s: dict, rows: list[dict], agree, out: Path, had_exclude: bool) -> str:
    n = s["images"]["train"] + s["images"]["val"]
    share = f" ({100 * s['flagged'] / n:.1f}%)" if n else ""
    lines = [
        "",
        f"label audit: dataset {s['dataset']}, {s['images']['train']} train + {s['images']['val']} val images, "
        f"{len(s['classes'])} classes, frozen {s['model']} features",
        f"out-of-fold linear probe: {s['folds']} folds x {s['repeats']} repeat(s), L2 {s['l2']:.0e} (chosen on val), "
        f"agrees with the given labels on {agree.text()}",
        f"flagged {s['flagged']} of {n} images{share} as likely mislabelled (train {s['flagged_by_split']['train']}, "
        f"val {s['flagged_by_split']['val']}); cleanlab filter_by={s['filter_by']}, ranked by {s['rank_by']}",
    ]
    lines += [f"note: {note}" for note in s["notes"]]
    if rows:
        top = rows[:SHOWN_IN_SUMMARY]
        given, other = (max(len(x), *(len(r[x]) for r in top)) for x in ("given", "suggested"))
        lines.append(f"  {'score':>7}  {'given':<{given}} -> {'suggested':<{other}}  path")
        for r in top:
            lines.append(f"  {r['score']:>7.2g}  {r['given']:<{given}} -> {r['suggested']:<{other}}  {r['path']}")
        if len(rows) > SHOWN_IN_SUMMARY:
            lines.append(f"  ... {len(rows) - SHOWN_IN_SUMMARY} more in audit.csv")
    if s["conflicting_duplicates"]:
        lines.append(f"also: {s['conflicting_duplicates']} group(s) of exact duplicates carry different labels "
                     "(python -m tlexp.inspect lists them)")  # fmt: skip
    pictures = ", suspects.png" if (out / "suspects.png").is_file() and rows else ""
    lines += ["", f"audit.csv, out_of_fold.csv, exclude.txt{pictures}, audit.json in {out}"]
    if rows:
        lines += [
            "review exclude.txt (delete the lines of images whose label is right), then train without the rest:",
            f"  {s['train_command']}",
        ]
        if had_exclude:
            lines.append("  (this audit ran with data.exclude: add that list's lines to exclude.txt to leave both out)")
    else:
        lines.append("nothing flagged: no image's given label is contradicted with confidence.")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(audit)(cfg)


if __name__ == "__main__":
    precheck("audit")
    main()
