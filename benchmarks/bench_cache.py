"""Cached vs uncached feature extraction, side by side in one run (`make bench-cache`).

Fashion-MNIST, 100 training images per class, EfficientNet-Lite0 with its bundled weights, the dataset's
default input size (96 px), feature_extraction for 20 epochs, same seed. Three runs:
  1. uncached (cache.mode=off): the backbone runs over train + val every epoch;
  2. cached, cold cache: one feature pass over train + val inside fit (and over test inside test);
  3. cached, warm cache: the features of run 2 are loaded (plus the linear-probe row).
Extra Hydra overrides go on the command line, e.g. `python benchmarks/bench_cache.py cache.views=2`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from tlexp.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def run(name: str, work: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "strategy=feature_extraction",
                "model=efficientnet_lite0",
                "dataset=fashion_mnist",
                "trainer.enable_progress_bar=false",
                f"output_dir={work / name}",
                f"cache.dir={work / 'cache'}",
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
            "cached (cold)": run("cached_cold", work, "cache.mode=on", *extra),
            "cached (warm)": run("cached_warm", work, "cache.mode=on", "linear_probe=true", *extra),
        }
    first = runs["uncached"]
    sizes = first["dataset_sizes"]
    print(
        f"\nfeature_extraction, {first['model']}, {first['dataset']} train/val/test "
        f"{sizes['train']}/{sizes['val']}/{sizes['test']}, {first['preprocessing']['image_size']} px, "
        f"{first['epochs']} epochs, seed {first['seed']}, cache.views={runs['cached (cold)']['feature_cache']['views']}"
    )
    print(f"  {'run':<15} {'fit s':>8} {'test s':>8} {'test acc':>9}")
    for name, m in runs.items():
        print(f"  {name:<15} {m['fit_seconds']:>8.1f} {m['test_seconds']:>8.1f} {m['test']['acc']:>9.4f}")
    probe = runs["cached (warm)"]["linear_probe"]
    print(f"  {'linear probe':<15} {probe['seconds']:>8.1f} {'':>8} {probe['test']['acc']:>9.4f}  (L2 {probe['l2']:g})")
    cold = runs["cached (cold)"]
    ratio = first["fit_seconds"] / cold["fit_seconds"]
    delta = 100 * (cold["test"]["acc"] - first["test"]["acc"])
    print(f"\n  fit-time ratio uncached / cached (cold cache, feature pass included): {ratio:.1f}x")
    warm = first["fit_seconds"] / runs["cached (warm)"]["fit_seconds"]
    print(f"  fit-time ratio uncached / cached (warm cache): {warm:.1f}x")
    print(f"  test accuracy, cached - uncached: {delta:+.2f} points")
    met = ratio >= 10 and abs(delta) <= 1.0
    print(f"  goal (>= 10x on a cold cache, accuracy within 1 point): {'met' if met else 'NOT met'}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
