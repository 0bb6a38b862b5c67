"""The recipe study (`make bench-recipes`): strategies' recipes side by side on the same split, chosen on val.

Each cell is one `tlexp.train` run in `<dir>/<recipe>_n<train images>`; a cell whose metrics.json exists is
read, not rerun, so an interrupted study continues where it stopped. Selection is on val (best_val_acc);
test is printed beside it, never used to choose. The table goes to the console and `<dir>/recipes.json`.

    python benchmarks/recipes.py                          # Fashion-MNIST, 100 per class: the main job's data
    python benchmarks/recipes.py --per-class 30 100 300 --recipes lp_ft gradual
    python benchmarks/recipes.py --quick                           # one tiny cell (the test runs this)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from tlexp.train import train

# name -> overrides; the playbook's literal gradual recipe is `strategy=gradual`.
RECIPES = {
    "feature_extraction": ["strategy=feature_extraction", "linear_probe=true"],
    "lp_ft": ["strategy=lp_ft"],
    "gradual": ["strategy=gradual"],
    "finetune": ["strategy=finetune"],
}
QUICK = [
    "dataset=synthetic",
    "model=test_resnet",
    "model.weights=none",
    "strategy.pretrained=false",
    "epoch_scale=0.05",
]


def cell(work: Path, recipe: str, size: int, extra: list[str]) -> dict:
    out = work / f"{recipe}_pc{size}"
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    per_class = [f"dataset.per_class={size}"]
    with initialize_config_module(config_module="tlexp.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*RECIPES[recipe], *per_class, "report.enabled=false", f"output_dir={out}", *extra],
        )
    print(f"--- {recipe}, {size} training images per class (load {os.getloadavg()[0]:.2f})", flush=True)
    return train(cfg)


def row(recipe: str, size: int, m: dict) -> dict:
    probe = m.get("linear_probe") or {}
    return {
        "recipe": recipe,
        "train_images": m["dataset_sizes"]["train"],
        "per_class": size,
        "best_val_acc": round(m["best_val_acc"], 4),
        "test_acc": round(m["test"]["acc"], 4),
        "test_f1": round(m["test"]["f1"], 4),
        "fit_seconds": m["fit_seconds"],
        "best_epoch": m["best_epoch"],
        "epochs": m["epochs"],
        "probe_val": probe.get("val_acc"),
        "probe_test": (probe.get("test") or {}).get("acc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="outputs/recipes", help="where the cells' run dirs go (resumable)")
    parser.add_argument("--per-class", type=int, nargs="+", default=[100], dest="sizes")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--quick", action="store_true", help="one tiny cell on synthetic data (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell, e.g. seed=1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    extra = list(args.overrides) + (QUICK if args.quick else [])
    sizes, recipes = ([20], ["lp_ft"]) if args.quick else (args.sizes, args.recipes)
    work = Path(args.dir)
    started = time.perf_counter()
    rows = [row(r, n, cell(work, r, n, extra)) for n in sizes for r in recipes]
    print(f"\nrecipes on {os.uname().machine}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"{time.perf_counter() - started:.0f} s (cells read from {work} are not rerun)")  # fmt: skip
    head = f"{'recipe':<20} {'train':>6} {'val acc':>8} {'test acc':>9} {'macro F1':>9} {'fit s':>8} {'best ep':>8}"
    print(head)
    for n in sizes:
        block = [r for r in rows if r["per_class"] == n]
        chosen = max(block, key=lambda r: r["best_val_acc"])
        for r in block:
            mark = "  <- chosen on val" if r is chosen else ""
            print(
                f"{r['recipe']:<20} {r['train_images']:>6} {r['best_val_acc']:>8.4f} {r['test_acc']:>9.4f} "
                f"{r['test_f1']:>9.4f} {r['fit_seconds']:>8.1f} {r['best_epoch']!s:>8}{mark}"
            )
            if r["probe_test"] is not None:
                print(f"{'  linear probe':<20} {'':>6} {r['probe_val']:>8.4f} {r['probe_test']:>9.4f}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipes.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
