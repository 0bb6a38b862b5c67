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

from tlexp.config.cli import parse_args, run_dir_of
from tlexp.config.errors import ConfigError, exit_on_user_error
from tlexp.config.validate import check_writable
from tlexp.model.inference import (
    CHECKPOINT,
    ONNX,
    TORCHSCRIPT,
    exported_forward,
    load_trained,
    onnx_module,
    sidecar_path,
)
from tlexp.run.atomic import atomic_path, write_text

from . import __version__

log = logging.getLogger("tlexp")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
MODEL_SUFFIXES = (CHECKPOINT, ONNX, TORCHSCRIPT)
INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-4
METRICS_LEVELS = 4  # <run>/pilots/<winner>/checkpoints/x.ckpt: an auto run's metrics.json is 4 folders up


def check_out_suffix(out: Path, fmt: str) -> None:
    """Refuse an `out=` whose suffix is not the format's: predict and load_classifier pick the loader by it."""
    want = FORMATS[fmt]
    suffix = out.suffix.lower()
    if suffix == want:
        return
    if out.is_dir():
        raise ConfigError(f"out={out} is a folder: name the file, e.g. out={out / ('model' + want)}.")
    other = next((f for f, s in FORMATS.items() if s == suffix), None)
    if other:
        said, alternative = f"has the suffix of {FORMAT_NAMES[other]}", f" or format={other}"
    else:
        said, alternative = (f"has the suffix '{out.suffix}'" if out.suffix else "has no suffix"), ""
    fixed = out.with_suffix(want) if suffix in MODEL_SUFFIXES else out.with_name(out.name + want)
    raise ConfigError(f"out={out} {said} but format={fmt} writes {want} files: use out={fixed}{alternative}.")


def export(module, fmt: str, path: Path, training: dict | None = None, checkpoint: str | None = None) -> dict:
    """Write `module` as `fmt` to `path` and its card to `path.json`, once the file is checked against the module.

    The check runs on the temp file: an export that fails it leaves `path` and its card as they were (or absent).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose {' or '.join(FORMATS)}.")
    path = Path(path)
    check_out_suffix(path, fmt)
    if fmt == "onnx":  # stop before writing anything: torch.onnx.export needs onnx, the check below onnxruntime
        onnx_module("onnx")
        onnx_module("onnxruntime")
    module = module.eval().cpu()
    net = nn.Sequential(module.backbone, module.head).eval()  # = module.forward, without the Lightning shell
    size = module.eval_preprocessing().image_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    card = model_card(module, fmt, path, training, checkpoint)
    with atomic_path(path) as tmp:
        WRITERS[fmt](net, example, tmp)
        card["max_abs_diff"] = check_export(module, fmt, tmp, example, path)
        # The card goes in just before the model takes its name: a card that fails to write leaves both as they were.
        write_text(sidecar_path(path), json.dumps(card, indent=2))
    return card


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript-based exporter is legacy; the dynamo one needs onnxscript
        # and a torch.export-able model, which not every timm backbone is. The legacy path is still supported.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=17,
        )


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.x deprecates TorchScript in favour of torch.export, but it still works and still loads
        # without Python (libtorch / C++), which is why the issue asks for it.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.")
        torch.jit.trace(net, example).save(str(path))


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


def check_export(module, fmt: str, written: Path, example: torch.Tensor, path: Path) -> float:
    """max |exported - module| on `example`, the `written` file loaded by `fmt`'s own loader; an error above
    TOLERANCE (or NaN). `path` is the name the file is meant for, kept as it was when the check fails."""
    with torch.inference_mode():
        expected = module(example)
    try:
        got = exported_forward(written, FORMATS[fmt], INPUT)(example)
    except Exception as err:  # noqa: BLE001 - onnxruntime and torch.jit fail to load a bad file in many ways
        raise ConfigError(
            f"the exported {fmt} model does not load back ({type(err).__name__}: {str(err)[:200]}); "
            f"{path} is left as it was. Try the other format."
        ) from err
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise ConfigError(
            f"the exported {fmt} model differs from the checkpoint by up to {diff:.2e} (> {TOLERANCE}); "
            f"{path} is left as it was. Try the other format."
        )
    return diff


def model_card(module, fmt: str, path: Path, training: dict | None, checkpoint: str | None) -> dict:
    """The sidecar JSON: how to feed the exported graph and read its output, and how the model was trained."""
    pre = module.eval_preprocessing()
    size = pre.image_size
    return {
        "format": fmt,
        "file": path.name,
        "input_name": INPUT,
        "input": {"shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"},
        "output": f"{OUTPUT} [batch, {len(module.class_names)}]; softmax gives class probabilities",
        "class_names": list(module.class_names),
        "preprocessing": pre.as_dict(),
        "preprocessing_recipe": (
            f"resize the shorter side to round({size} / crop_pct) = {round(size / pre.crop_pct)} px "
            f"({pre.interpolation}), centre-crop {size}x{size}, scale to [0, 1], subtract mean, divide by std"
        ),
        "model": module.hparams.model_name,
        "checkpoint": checkpoint,
        "training": training,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tlexp": __version__, "torch": torch.__version__},
    }


def find_metrics(ckpt: Path, levels: int = METRICS_LEVELS) -> Path | None:
    """The run's metrics.json: in the nearest of the checkpoint's folder and the few above it that holds one.

    A plain run keeps it two folders up (<run>/checkpoints/), a strategy=auto winner four
    (<run>/pilots/<winner>/checkpoints/); the pilot dirs hold none.
    """
    for folder in list(Path(ckpt).expanduser().absolute().parents)[:levels]:
        if (folder / "metrics.json").is_file():
            return folder / "metrics.json"
    return None


def training_summary(ckpt: Path) -> dict | None:
    """What metrics.json of the checkpoint's run says about training; None when there is none (or unreadable)."""
    found = find_metrics(ckpt)
    if found is None:
        return None
    try:
        m = json.loads(found.read_text())
    except (OSError, ValueError) as err:  # the card is still worth writing without it
        log.warning("%s cannot be read (%s); the model card leaves out how the model was trained", found, err)
        return None
    keys = ("model", "weights", "strategy", "phases", "dataset", "dataset_sizes", "epochs", "best_epoch")
    keys += ("best_val_acc",)
    summary = {k: m.get(k) for k in keys}
    summary["test"] = m.get("test")
    summary["test_checkpoint"] = m.get("checkpoint")  # the test metrics are of this checkpoint
    if m.get("evaluation"):
        summary["calibration"] = {k: m["evaluation"].get(k) for k in ("ece", "temperature", "ece_scaled")}
    summary["metrics_file"] = str(found)
    return summary


def run(cfg) -> dict:
    ckpt = Path(cfg.ckpt).expanduser()
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: choose {' or '.join(FORMATS)}.")
    out = (
        Path(cfg.out).expanduser()
        if cfg.get("out")
        else run_dir_of(ckpt) / "export" / f"{ckpt.stem}{FORMATS[cfg.format]}"
    )
    check_out_suffix(out, cfg.format)
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
