"""Throughput of tlexp against the compute bound and against a plain PyTorch loop, measured side by side.

For each model, in one process, repeated and interleaved (bound, plain, tlexp, bound, plain, tlexp, ...):
  bound   train steps (forward, loss, backward, AdamW step) on one synthetic batch already in memory, and
          forward passes under no_grad: what this model can do on this machine at all;
  plain   a plain PyTorch loop over the same DataLoader (same data, augmentation, batch size, workers),
          same model, optimizer groups and BatchNorm mode: one fine-tuning epoch, then one test pass;
  tlexp   `tlexp.train.train(cfg)` with strategy=finetune: the DataModule, augmentation, PhaseSchedule,
          metrics and logging in Lightning's loop; its training epochs and its test pass are timed by a callback.
Epochs after the first are timed (the first pays for worker start-up); medians over epochs and repeats.
pipeline efficiency = tlexp images/s / bound images/s; Lightning overhead = tlexp epoch time / plain epoch time.

  python benchmarks/throughput.py                              # make bench: efficientnet_lite0 and resnet18, CPU
  python benchmarks/throughput.py --models resnet50 --image-size 224 --batch-size 256 --precision bf16-mixed \
      --accelerator gpu --channels-last --compile --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tlexp.model.module import TransferModule  # noqa: E402
from tlexp.run.accel import prepare_backbone, resolve_precision  # noqa: E402
from tlexp.run.build import build_datamodule, preprocessing  # noqa: E402
from tlexp.train import train  # noqa: E402

TIMM_NAMES = {"efficientnet_lite0": "tf_efficientnet_lite0", "resnet18": "resnet18", "resnet50": "resnet50"}


class Stopwatch(L.Callback):
    """Per training epoch and per test pass: seconds from the epoch start to the last batch done, and images."""

    def __init__(self):
        self.train, self.test = [], []

    def _start(self, rows):
        rows.append({"start": time.perf_counter(), "end": None, "images": 0})

    def _batch(self, rows, batch):
        rows[-1]["end"], rows[-1]["images"] = time.perf_counter(), rows[-1]["images"] + len(batch[1])

    def on_train_epoch_start(self, trainer, module):
        self._start(self.train)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        _sync(module.device)
        self._batch(self.train, batch)

    def on_test_epoch_start(self, trainer, module):
        self._start(self.test)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        _sync(module.device)
        self._batch(self.test, batch)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rate(rows) -> tuple[float, float]:
    """(seconds, images/s) of one timed pass."""
    seconds = rows["end"] - rows["start"]
    return seconds, rows["images"] / seconds


def compose_cfg(args, model: str, out: Path):
    overrides = [
        f"model={model}",
        f"model.weights={'none' if args.random_weights else args.weights or 'bundled'}",
        "strategy=finetune",
        f"strategy.phases.0.epochs={args.epochs}",
        "dataset=fashion_mnist",
        "dataset.per_class=null",
        f"dataset.train_size={args.train_images}",
        "dataset.val_per_class=5",
        f"dataset.test_per_class={args.test_images // 10}",
        f"dataset.preprocess.image_size={args.image_size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.num_workers}",
        f"data.augment_on={args.augment_on}",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        f"+trainer.benchmark={args.accelerator == 'gpu'}",  # cudnn.benchmark, as trainer=gpu sets it
        f"channels_last={str(args.channels_last).lower()}",
        f"compile={str(args.compile).lower()}",
        f"output_dir={out}",
    ]
    if args.random_weights:  # throughput does not depend on the weights' values; finetune insists on pretrained
        overrides.append("strategy.pretrained=false")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def build(cfg, args):
    """The same module, data and optimizer groups as tlexp builds, for the plain loop and the bound."""
    weights = None if args.random_weights else cfg.model.weights
    module = TransferModule(model_name=cfg.model.name, num_classes=10, weights=weights, image_size=args.image_size)
    pre = preprocessing(cfg, module.backbone)
    dm = build_datamodule(
        cfg, pre, batch_size=args.batch_size, num_workers=args.num_workers, augment_on=args.augment_on
    )
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    prepare_backbone(module.backbone, args.channels_last, args.compile)
    module.to(device)
    module.set_frozen_bn(list(module.groups))  # finetune's bn: eval (statistics stay the pretrained ones)
    lrs = {name: 1e-3 if name == "head" else 1e-4 for name in module.groups}
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": lrs[n], "weight_decay": cfg.optimizer.weight_decay} for n, ps in module.groups.items()]
    )
    return module, dm, opt, device


def _autocast(args, device):
    precision = resolve_precision(args.precision, args.accelerator)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _train_step(module, opt, x, y, args, device):
    with _autocast(args, device):
        loss = F.cross_entropy(module(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # (16-mixed would want a GradScaler; the GPU recipe uses bf16)
    opt.step()


def _on_device(batch, dm, device, train: bool):
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    return (dm.batch_augment(x, train) if dm.batch_augment is not None else x), y


def plain_loop(module, dm, opt, args, device) -> dict:
    """One fine-tuning epoch per call after a warm-up epoch, then one test pass: no Lightning."""
    loader, test_loader = dm.train_dataloader(), dm.test_dataloader()
    train_rows, test_rows = [], []
    for _ in range(args.epochs):
        module.train()
        row = {"start": time.perf_counter(), "images": 0}
        for batch in loader:
            x, y = _on_device(batch, dm, device, train=True)
            _train_step(module, opt, x, y, args, device)
            _sync(device)
            row["end"], row["images"] = time.perf_counter(), row["images"] + len(y)
        train_rows.append(row)
    module.eval()
    row = {"start": time.perf_counter(), "images": 0}
    with torch.no_grad():
        for batch in test_loader:
            x, y = _on_device(batch, dm, device, train=False)
            with _autocast(args, device):
                module(x)
            _sync(device)
            row["end"], row["images"] = time.perf_counter(), row["images"] + len(y)
    test_rows.append(row)
    return {"train": train_rows[1:], "test": test_rows}


def bound(module, opt, args, device) -> dict:
    """Train steps and forward passes on one batch already on the device."""
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    out = {}
    module.train()
    _train_step(module, opt, x, y, args, device)  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(args.bound_steps):
        _train_step(module, opt, x, y, args, device)
    _sync(device)
    out["train"] = args.bound_steps * args.batch_size / (time.perf_counter() - start)
    module.eval()
    with torch.no_grad(), _autocast(args, device):
        module(x)
        start = time.perf_counter()
        for _ in range(args.bound_steps):
            module(x)
        _sync(device)
    out["test"] = args.bound_steps * args.batch_size / (time.perf_counter() - start)
    return out


def run_model(args, model: str) -> dict:
    samples = {k: [] for k in ("bound_train", "bound_test", "plain_epoch", "plain_train", "plain_test")}
    samples.update({k: [] for k in ("tlexp_epoch", "tlexp_train", "tlexp_test")})
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
            cfg = compose_cfg(args, model, Path(tmp) / "run")
            module, dm, opt, device = build(cfg, args)
            workers = dm.num_workers
            b = bound(module, opt, args, device)
            samples["bound_train"].append(b["train"])
            samples["bound_test"].append(b["test"])
            p = plain_loop(module, dm, opt, args, device)
            for row in p["train"]:
                seconds, rate = _rate(row)
                samples["plain_epoch"].append(seconds)
                samples["plain_train"].append(rate)
            samples["plain_test"].append(_rate(p["test"][0])[1])
            del module, dm, opt
            watch = Stopwatch()
            train(cfg, callbacks=[watch])
            for row in watch.train[1:]:
                seconds, rate = _rate(row)
                samples["tlexp_epoch"].append(seconds)
                samples["tlexp_train"].append(rate)
            samples["tlexp_test"].append(_rate(watch.test[-1])[1])
        print(f"  {model} repeat {repeat + 1}/{args.repeats} done", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "model": TIMM_NAMES.get(model, model),
        "loader_workers": workers,
        "images_per_s": {k: round(v, 2) for k, v in med.items() if not k.endswith("epoch")},
        "epoch_seconds": {"plain": round(med["plain_epoch"], 3), "tlexp": round(med["tlexp_epoch"], 3)},
        "pipeline_efficiency_train": round(med["tlexp_train"] / med["bound_train"], 3),
        "pipeline_efficiency_test": round(med["tlexp_test"] / med["bound_test"], 3),
        "tlexp_over_plain_epoch": round(med["tlexp_epoch"] / med["plain_epoch"], 3),
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.node()}: {os.cpu_count()} x {cpu}, {gpu}, torch {torch.__version__}, load {load:.1f}"


def print_table(results: list[dict], args) -> None:
    print(
        f"\nbatch {args.batch_size}, {args.image_size} px, precision {args.precision}, workers {args.num_workers} "
        f"(= {', '.join(str(r['loader_workers']) for r in results)}), "
        f"augment on {args.augment_on}, channels_last {args.channels_last}, compile {args.compile}"
    )
    head = f"{'model':<22}{'pass':<7}{'bound img/s':>12}{'plain img/s':>12}{'tlexp img/s':>12}{'efficiency':>11}"
    print(head + f"{'tlexp/plain':>12}\n" + "-" * (len(head) + 12))
    for r in results:
        ips = r["images_per_s"]
        for step in ("train", "test"):
            ratio = f"{r['tlexp_over_plain_epoch']:>12.3f}" if step == "train" else f"{'':>12}"
            print(
                f"{r['model']:<22}{step:<7}{ips[f'bound_{step}']:>12.1f}{ips[f'plain_{step}']:>12.1f}"
                f"{ips[f'tlexp_{step}']:>12.1f}{r[f'pipeline_efficiency_{step}']:>11.3f}{ratio}"
            )
    print("efficiency = tlexp / bound images/s; tlexp/plain = fine-tune epoch time ratio (1.0 = no overhead)\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,resnet18", help="conf/model names, comma-separated")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed | auto")
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--num-workers", default="auto", help="loader processes: auto (as data.num_workers) or a count")
    ap.add_argument("--augment-on", default="cpu", choices=["cpu", "device"])
    ap.add_argument("--train-images", type=int, default=640, help="per fine-tuning epoch")
    ap.add_argument("--test-images", type=int, default=1280)
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    ap.add_argument("--bound-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default=None, help="a weights file (default: bundled for efficientnet_lite*)")
    ap.add_argument("--json", default="benchmarks/results/throughput.json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", module="lightning")  # this script only: keep the table readable
    logging.getLogger("lightning").setLevel(logging.ERROR)
    torch.backends.cudnn.benchmark = args.accelerator == "gpu"  # the plain loop and the bound too
    results = []
    for model in args.models.split(","):
        # resnet*: no hub here and throughput does not depend on weight values: random init unless a file is given
        args.random_weights = not model.startswith("efficientnet_lite") and args.weights is None
        results.append(run_model(args, model))
        report = {"machine": machine(), "args": vars(args), "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))  # after each model: a long run keeps its figures
    print_table(results, args)
    print(f"machine: {report['machine']}\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
