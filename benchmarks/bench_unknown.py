"""`make bench-unknown`: does a model tell other datasets' images from its own, and how many get in at its threshold?

A feature_extraction model (EfficientNet-Lite0, its bundled ImageNet weights, 96 px, cached features) is trained on
each of three sets through `tlexp.fit`: Fashion-MNIST (1,000 training images, 1,000 test), scikit-learn's digits and
the texture patches (benchmarks/datasets.py; `make bench-datasets`). The training run chooses its 'unknown' threshold
on its own val split (evaluation/unknown.py: 5% of val rejected). Each model is then shown its own test images
(known) and the other two sets' test images (unknown), each through the model's own preprocessing, and for every
score (knn: similarity to the 10th nearest training image's features, the default; energy and msp at the val
temperature) the table gives:
- AUROC: the probability that a known test image scores above an unknown one (target >= 0.9 on every pair, for the
  score that decides);
- accepted: the share of the unknown images at or above that score's val threshold, i.e. given a class by predict;
- known rejected: the share of the model's own test images under the deciding score's threshold (the 5% asked, if
  test is like val).
Runs live in --dir/<set>/; a finished one is read back, not trained again. The table goes to the console and
--dir/unknown.json.

    python benchmarks/datasets.py --root outputs/datasets     # digits/ and textures/ (once; make bench-datasets)
    python benchmarks/bench_unknown.py                        # three runs and six pairs: minutes on a 2-core CPU
    python benchmarks/bench_unknown.py --sets digits textures
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import tlexp
from tlexp.config.cli import compose_config
from tlexp.evaluation import unknown
from tlexp.model.inference import load_trained
from tlexp.run.build import build_datamodule

COMMON = ["report.enabled=false", "report.train_batch_preview=0", "trainer.enable_progress_bar=false"]
FOLDER = ["dataset=imagefolder", "dataset.preprocess.image_size=96"]  # as the other benches: 96 px on the CPU


def sets(root: Path) -> dict[str, list[str]]:
    """Each set's dataset overrides."""
    return {
        "fmnist": ["dataset=fashion_mnist", "dataset.test_per_class=100"],  # 100 a class: 1,000 test images
        "digits": [*FOLDER, f"dataset.root={root / 'digits'}"],
        "textures": [*FOLDER, f"dataset.root={root / 'textures'}"],
    }


def trained(name: str, dataset: list[str], work: Path, extra: list[str]) -> dict:
    out = work / name
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    print(f"--- training on {name}", flush=True)
    overrides = ["strategy=feature_extraction", *dataset, *COMMON, *extra]
    return tlexp.fit(*overrides, output_dir=str(out)).metrics


def test_outputs(module, dataset: list[str], extra: list[str]) -> tuple:
    """(features, logits) of a set's test split through `module`, with the module's own preprocessing."""
    cfg = compose_config("train", ["strategy=feature_extraction", *dataset, *COMMON, *extra])
    dm = build_datamodule(cfg, module.eval_preprocessing())
    dm.setup()
    return unknown.collect(module, dm.evaluation_loader("test"))[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="outputs/bench_unknown", help="where the runs go (resumable)")
    parser.add_argument("--datasets", default="outputs/datasets", help="digits/ and textures/ (make bench-datasets)")
    names = ["fmnist", "digits", "textures"]
    parser.add_argument("--sets", nargs="+", default=names, choices=names)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. model=resnet18")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work, available = Path(args.dir), sets(Path(args.datasets))
    chosen = {k: available[k] for k in args.sets}
    started = time.perf_counter()
    runs = {name: trained(name, dataset, work, args.overrides) for name, dataset in chosen.items()}
    rows = []
    for name, metrics in runs.items():
        module = load_trained(metrics["checkpoint"])
        record = unknown.from_checkpoint(metrics["checkpoint"])  # with the training features knn measures to
        known = test_outputs(module, chosen[name], args.overrides)
        for other, dataset in chosen.items():
            if other == name:
                continue
            foreign = test_outputs(module, dataset, args.overrides)
            found = unknown.separation(known, foreign, record)
            rows.append({"model": name, "unknowns": other, "known": len(known[1]), "unknown": len(foreign[1]),
                         "test_acc": metrics["test"]["acc"], "temperature": record["temperature"],
                         "val_images": record["val_images"],
                    "decides": record["score"],
                         **{f"{k}_{s}": v for s, r in found.items() for k, v in r.items()}})  # fmt: skip
    print_table(rows, time.perf_counter() - started)
    (work / "unknown.json").write_text(json.dumps(rows, indent=2))
    print(f"written {work / 'unknown.json'}")


def print_table(rows: list[dict], seconds: float) -> None:
    """AUROC and the share of unknowns accepted, per score; the target is on the score that decides (knn)."""
    scores = [k for k in unknown.SCORES if f"auroc_{k}" in rows[0]] if rows else []
    head = "| model (test acc) | unknowns (images) | " + " | ".join(f"AUROC {k}" for k in scores)
    head += " | " + " | ".join(f"accepted {k}" for k in scores) + " | known rejected |"
    lines = [head, "|---|---|" + "---:|" * (2 * len(scores) + 1)]
    for r in rows:
        aurocs = " | ".join(f"{r[f'auroc_{k}']:.3f}" + ("" if r[f"auroc_{k}"] >= 0.9 else " (< 0.9)") for k in scores)
        shares = " | ".join(f"{r[f'accepted_{k}']:.1%}" for k in scores)
        known = r["known_rejected_" + r["decides"]]
        who = f"| {r['model']} ({r['test_acc']:.3f}) | {r['unknowns']} ({r['unknown']})"
        lines.append(f"{who} | {aurocs} | {shares} | {known:.1%} |")
    decides = rows[0]["decides"] if rows else "?"
    met = all(r[f"auroc_{decides}"] >= 0.9 for r in rows)
    lines.append(
        f"\n{len(rows)} pairs in {seconds / 60:.1f} min. The threshold (5% of val rejected) is {decides}'s: accepted = "
        f"unknowns given a class by predict, known rejected = the model's own test images called unknown "
        f"({decides}). Target AUROC >= 0.9 on every pair ({decides}): {'met' if met else 'NOT met'}."
    )
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
