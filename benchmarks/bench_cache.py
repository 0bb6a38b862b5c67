"""Cached vs uncached feature extraction, side by side in one run (`make bench-cache`).

Fashion-MNIST, 100 training images per class, EfficientNet-Lite0 with its bundled weights, the dataset's
default input size (96 px), feature_extraction for 20 epochs, same seed. Five runs:
  1. uncached (cache.mode=off), augmented as any image run: the backbone runs over train + val every epoch;
  2. uncached without augmentation (augment.enabled=false): the same training signal as cache.views=0;
  3. cached, cold cache: one feature pass over train + val inside fit (and over test inside test);
  4. cached, warm cache: the features of run 3 are loaded (plus the linear-probe row);
  5. cached with cache.views=2, cold (its own cache): two augmented views of the training images.
Run 3 against run 2 measures the cache itself (same work, same result expected); against run 1 it adds the
trade of cache.views=0, which trains the head on un-augmented features. Run 5 shows the other side of that trade.
Extra Hydra overrides go on the command line, e.g. `python benchmarks/bench_cache.py seed=1`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from tlexp.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def run(name: str, work: Path, *overrides: str, cache: str = "cache") -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "strategy=feature_extraction",
                "model=efficientnet_lite0",
                "dataset=fashion_mnist",
                "trainer.enable_progress_bar=false",
                f"output_dir={work / name}",
                f"cache.dir={work / cache}",
                *overrides,
            ],
        )
    print(f"--- {name}", flush=True)
    return train(cfg)


def main(extra: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-cache-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        runs = {
            "uncached": run("uncached", work, "cache.mode=off", *extra),
            "uncached, no augmentation": run("plain", work, "cache.mode=off", "augment.enabled=false", *extra),
            "cached (cold)": run("cached_cold", work, "cache.mode=on", *extra),
            "cached (warm)": run("cached_warm", work, "cache.mode=on", "linear_probe=true", *extra),
            "cached, 2 views (cold)": run("views", work, "cache.mode=on", "cache.views=2", *extra, cache="cache2"),
        }
    first = runs["uncached"]
    sizes = first["dataset_sizes"]
    print(
        f"\nfeature_extraction, {first['model']}, {first['dataset']} train/val/test "
        f"{sizes['train']}/{sizes['val']}/{sizes['test']}, {first['preprocessing']['image_size']} px, "
        f"{first['epochs']} epochs, seed {first['seed']}"
    )
    print(f"  {'run':<27} {'fit s':>7} {'uncached/this':>14} {'test s':>7} {'test acc':>9}")
    for name, m in runs.items():
        ratio = first["fit_seconds"] / m["fit_seconds"]
        fit, test, acc = m["fit_seconds"], m["test_seconds"], m["test"]["acc"]
        print(f"  {name:<27} {fit:>7.1f} {ratio:>13.1f}x {test:>7.1f} {acc:>9.4f}")
    probe = runs["cached (warm)"]["linear_probe"]
    print(f"  {'linear probe (warm cache)':<27} {probe['seconds']:>7.1f} {'':>14} {'':>7} {probe['test']['acc']:>9.4f}")
    cold = runs["cached (cold)"]
    ratio = first["fit_seconds"] / cold["fit_seconds"]
    same = 100 * (cold["test"]["acc"] - runs["uncached, no augmentation"]["test"]["acc"])
    trade = 100 * (cold["test"]["acc"] - first["test"]["acc"])
    print(f"\n  fit-time ratio uncached / cached (cold cache, feature pass included): {ratio:.1f}x")
    print(f"  test accuracy, cached - uncached without augmentation (the cache itself): {same:+.2f} points")
    print(f"  test accuracy, cached (views=0) - uncached with augmentation (the views=0 trade): {trade:+.2f} points")
    met = ratio >= 10 and abs(same) <= 1.0
    verdict = "met" if met else "NOT met"
    print(f"  goal (>= 10x on a cold cache, accuracy within 1 point of the same run on images): {verdict}")
    print(f"  within 1 point of the augmented run as well: {'yes' if abs(trade) <= 1.0 else 'no'}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
