"""Export a checkpoint to ONNX or TorchScript, with a sidecar JSON model card.

    python -m tlexp.export ckpt=<file.ckpt> format=onnx|torchscript [out=<file>]

The exported graph maps a normalised NCHW float batch to logits; the card says how to get there
(class names, input size, mean/std, interpolation, crop) and how the model was trained.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .atomic import atomic_path, write_text
from .cli import parse_args, run_dir_of
from .errors import ConfigError, exit_on_user_error
from .inference import load_classifier, load_trained, onnx_module, sidecar_path
from .validate import check_writable

log = logging.getLogger("tlexp")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-4


def export(module, fmt: str, path: Path, training: dict | None = None, checkpoint: str | None = None) -> dict:
    """Write `module` as `fmt` to `path` and its card to `path.json`; check the file against the module."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose {' or '.join(FORMATS)}.")
    if fmt == "onnx":  # stop before writing anything: torch.onnx.export needs onnx, the check below onnxruntime
        onnx_module("onnx")
        onnx_module("onnxruntime")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().cpu()
    net = nn.Sequential(module.backbone, module.head).eval()  # = module.forward, without the Lightning shell
    pre = module.eval_preprocessing()
    size = int(pre["image_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        with warnings.catch_warnings():
            # torch >= 2.9 warns that the TorchScript-based exporter is legacy; the dynamo one needs onnxscript
            # and a torch.export-able model, which not every timm backbone is. The legacy path is still supported.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
            with atomic_path(path) as tmp:
                torch.onnx.export(
                    net,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                    opset_version=17,
                )
    else:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.x deprecates TorchScript in favour of torch.export, but it still works and still loads
            # without Python (libtorch / C++), which is why the issue asks for it.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.")
            with atomic_path(path) as tmp:
                torch.jit.trace(net, example).save(str(tmp))

    card = {
        "format": fmt,
        "file": path.name,
        "input_name": INPUT,
        "input": {"shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"},
        "output": f"{OUTPUT} [batch, {len(module.class_names)}]; softmax gives class probabilities",
        "class_names": list(module.class_names),
        "preprocessing": pre,
        "preprocessing_recipe": (
            f"resize the shorter side to round({size} / crop_pct) = {round(size / pre['crop_pct'])} px "
            f"({pre['interpolation']}), centre-crop {size}x{size}, scale to [0, 1], subtract mean, divide by std"
        ),
        "model": module.hparams.model_name,
        "checkpoint": checkpoint,
        "training": training,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tlexp": __version__, "torch": torch.__version__},
    }
    write_text(sidecar_path(path), json.dumps(card, indent=2))

    # The exported file must compute what the module computes.
    with torch.inference_mode():
        expected = module(example)
    got = load_classifier(path).forward(example)
    card["max_abs_diff"] = float((got - expected).abs().max())
    write_text(sidecar_path(path), json.dumps(card, indent=2))
    if card["max_abs_diff"] > TOLERANCE:
        raise ConfigError(
            f"the exported {fmt} model differs from the checkpoint by up to {card['max_abs_diff']:.2e} "
            f"(> {TOLERANCE}); {path} is not to be trusted. Try the other format."
        )
    return card


def training_summary(ckpt: Path) -> dict | None:
    """What metrics.json of the checkpoint's run says about training; None when it is not next to it."""
    found = run_dir_of(ckpt) / "metrics.json"
    if not found.is_file():
        return None
    m = json.loads(found.read_text())
    keys = ("model", "weights", "strategy", "phases", "dataset", "dataset_sizes", "epochs", "best_epoch")
    keys += ("best_val_acc",)
    summary = {k: m.get(k) for k in keys}
    summary["test"] = m.get("test")
    summary["test_checkpoint"] = m.get("checkpoint")  # the test metrics are of this checkpoint
    if m.get("evaluation"):
        summary["calibration"] = {k: m["evaluation"].get(k) for k in ("ece", "temperature", "ece_scaled")}
    return summary


def run(cfg) -> dict:
    ckpt = Path(cfg.ckpt).expanduser()
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: choose {' or '.join(FORMATS)}.")
    out = Path(cfg.out) if cfg.get("out") else run_dir_of(ckpt) / "export" / f"{ckpt.stem}{FORMATS[cfg.format]}"
    check_writable(out.parent, f"Pass out=<a writable path>/model{FORMATS[cfg.format]} (now {out}).")
    module = load_trained(ckpt)
    card = export(module, cfg.format, out, training_summary(ckpt), str(ckpt))
    print(
        f"\n  exported  {out} ({cfg.format}, {out.stat().st_size / 1e6:.1f} MB)\n  card      {sidecar_path(out)}\n"
        f"  classes   {len(card['class_names'])}, input {card['input']['shape']}\n"
        f"  checked   max |exported - checkpoint| = {card['max_abs_diff']:.2e}\n",
        flush=True,
    )
    return card


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_args(sys.argv[1:] if argv is None else argv, "export", __doc__))


if __name__ == "__main__":
    main()
