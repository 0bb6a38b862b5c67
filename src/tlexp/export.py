"""Export a checkpoint to ONNX or TorchScript, with a sidecar JSON model card.

    python -m tlexp.export ckpt=<file.ckpt> format=onnx|torchscript [out=<file>]
    python -m tlexp.export ckpt=<file.ckpt> format=onnx quantize=int8 [calibration_images=200] [max_drop=1.0]

The exported graph maps a normalised NCHW float batch to logits; the card says how to get there
(class names, input size, mean/std, interpolation, crop) and how the model was trained. quantize=int8 writes
a statically quantised ONNX model (onnxruntime, QDQ, per-channel weights), calibrated on the run's training
images and refused when it loses more than max_drop points of test accuracy against the float model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from tlexp.config.cli import parse_args, run_dir_of
from tlexp.config.errors import ConfigError, DataError, exit_on_user_error
from tlexp.config.validate import check_writable
from tlexp.data.images import TransformedImages
from tlexp.evaluation import unknown as unknown_inputs
from tlexp.evaluation.intervals import paired_difference, wilson
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
from tlexp.run.build import build_datamodule
from tlexp.run.resume import RUN_CONFIG

from . import __version__

log = logging.getLogger("tlexp")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
MODEL_SUFFIXES = (CHECKPOINT, ONNX, TORCHSCRIPT)
INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-4
METRICS_LEVELS = 4  # <run>/pilots/<winner>/checkpoints/x.ckpt: an auto run's metrics.json is 4 folders up
INT8 = "int8"
# Chosen by measurement on the main job's model (EfficientNet-Lite0, Fashion-MNIST, 96 px; docs/predict-export.md):
# per-tensor weights lose 2.5 points where per-channel lose 0.02; QDQ runs as fast as QOperator once the graph's
# pads are folded, and keeps to standard ONNX ops; MinMax, Entropy and Percentile ranges agree within 0.1 point,
# and MinMax calibrates in half the time. uint8 activations x int8 weights (U8S8) is onnxruntime's fast x86 path.
QUANTIZATION = {
    "method": "static",
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "calibration_method": "MinMax",
}
CALIBRATION_SEED = 0


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


@dataclass
class Int8:
    """What quantize=int8 needs beside the model: the run's images and the settings of calibration and check."""

    datamodule: object  # the run's TransferDataModule, set up: train (calibration) and test (the check) splits
    calibration_images: int = 200
    max_drop: float = 1.0  # points of test accuracy the int8 model may lose against the float one


def export(
    module,
    fmt: str,
    path: Path,
    training: dict | None = None,
    checkpoint: str | None = None,
    int8: Int8 | None = None,
) -> dict:
    """Write `module` as `fmt` to `path` and its card to `path.json`, once the file is checked against the module.

    The check runs on the temp file: an export that fails it leaves `path` and its card as they were (or absent).
    With `int8`, the float ONNX graph is checked, then quantised and checked on the run's test images.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose {' or '.join(FORMATS)}.")
    if int8 is not None and fmt != "onnx":
        raise ConfigError(f"quantize=int8 writes ONNX models (onnxruntime's quantiser): use format=onnx, not {fmt}.")
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
        if int8 is None:
            WRITERS[fmt](net, example, tmp)
            card["max_abs_diff"] = check_export(module, fmt, tmp, example, path)
        else:
            # The float graph lives in a temp folder of its own: only the checked int8 model takes a name near `path`.
            with tempfile.TemporaryDirectory(prefix="tlexp-int8-") as work:
                float_file = Path(work) / "float.onnx"
                WRITERS[fmt](net, example, float_file)
                float_diff = check_export(module, fmt, float_file, example, path)
                card["quantization"] = quantize_int8(float_file, tmp, int8, path)
                card["quantization"]["float_graph_max_abs_diff"] = float_diff
            card["dtype"] = INT8
            card["max_abs_diff"] = card["quantization"]["check"]["max_abs_diff"]
        # The card goes in just before the model takes its name: a card that fails to write leaves both as they were.
        write_text(sidecar_path(path), json.dumps(card, indent=2))
    return card


class StaticSameConv(nn.Module):
    """timm's Conv2dSame (TensorFlow 'SAME' padding, worked out from the input's size at every call) for one input
    size: the pads become constants, so the ONNX graph holds no Shape -> Ceil -> Pad arithmetic, which costs time
    at batch 1 and, quantised along with the convolutions, shifts the pads and ruins an int8 model."""

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int]):
        super().__init__()
        from timm.layers.padding import get_same_padding

        self.conv = conv
        ph, pw = (get_same_padding(size[i], conv.kernel_size[i], conv.stride[i], conv.dilation[i]) for i in (0, 1))
        self.pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # as timm's pad_same splits them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(F.pad(x, self.pads), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def static_same_padding(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """`net`, or a copy of it whose Conv2dSame layers pad by constants for inputs the size of `example` (the only
    size the exported graph accepts)."""
    from timm.layers import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in net.named_modules()
        if isinstance(m, Conv2dSame)
    ]
    if not hooks:
        return net
    try:
        with torch.inference_mode():
            net(example)
    finally:
        for h in hooks:
            h.remove()
    net = copy.deepcopy(net)  # the module itself stays as it was: the export is checked against it
    for name, size in sizes.items():
        parent, _, leaf = name.rpartition(".")
        owner = net.get_submodule(parent)
        setattr(owner, leaf, StaticSameConv(getattr(owner, leaf), size))
    return net


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    net = static_same_padding(net, example)
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript-based exporter is legacy; the dynamo one needs onnxscript
        # and a torch.export-able model, which not every timm backbone is. The legacy path is still supported.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        # StaticSameConv's constant pads export as a reversed Slice that torch does not fold; prepare_onnx does.
        warnings.filterwarnings("ignore", category=UserWarning, message=r"Constant folding - Only steps=1")
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
    prepare_onnx(path)


def prepare_onnx(path: Path) -> None:
    """onnxruntime's own preparation of a graph (the `quant_pre_process` step: constant folding, Conv+BatchNorm
    fusion, shape inference; standard ONNX ops only), then the constant zero Pads folded into the Conv after them.
    The file is checked against the module afterwards like any export. A graph it cannot prepare is kept as exported.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="tlexp-onnx-") as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            with onnxruntime_info_hidden():
                quant_pre_process(str(path), str(prepared))
        except Exception as err:  # noqa: BLE001 - shape inference fails on unusual graphs in many ways
            log.warning("onnxruntime could not prepare the graph (%s: %s); kept as exported", type(err).__name__, err)
            return
        model = onnx.load(str(prepared))
    fold_pads_into_convs(model.graph)
    used = {d for node in model.graph.node for d in (node.domain, "ai.onnx")} | {""}
    kept = [o for o in model.opset_import if o.domain in used]  # ORT's saved graphs declare every domain it knows
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))


@contextlib.contextmanager
def onnxruntime_info_hidden() -> Iterator[None]:
    """onnxruntime's quantisation tools log each step and every weight scale they adjust at INFO on the root logger
    (80 lines for EfficientNet-Lite0), where tlexp prints its own steps. For the duration of the call the console
    handlers pass over its INFO records; its warnings still show."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}onnxruntime{os.sep}" not in record.pathname

    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def fold_pads_into_convs(graph) -> int:
    """Fold each constant zero Pad of the spatial axes into the Conv that alone reads it (ONNX Conv takes separate
    begin/end pads; torch's cannot, so TensorFlow-'SAME' convolutions export as Pad + Conv). Returns the count."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def constant(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or len(pad.input) < 2:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = constant(pad.input[1])
        value = constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        axes = len(pad.input) > 3 and pad.input[3]
        convs = readers.get(pad.output[0], [])
        if mode != b"constant" or pads is None or value is None or np.any(value != 0) or axes or len(convs) != 1:
            continue
        conv = convs[0]
        attrs = {a.name: a for a in conv.attribute}
        auto_pad = attrs["auto_pad"].s if "auto_pad" in attrs else b"NOTSET"
        pads = [int(p) for p in pads]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0] or auto_pad not in (b"NOTSET", b""):
            continue
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:  # NCHW: only H and W padded
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    # The folded Pads' constants, unless something else reads them (onnxruntime warns of unused initializers).
    constants = {name for pad in folded for name in pad.input[1:]}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name in constants and i.name not in used]:
        graph.initializer.remove(init)
    return len(folded)


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


def calibration_images(datamodule, count: int, seed: int = CALIBRATION_SEED):
    """`count` images of the run's train split (all of them when it holds fewer), drawn without replacement with a
    fixed seed, in split order. Training images only: the test split, which checks the int8 model, tunes nothing."""
    train = datamodule.splits["train"]
    chosen = np.random.default_rng(seed).choice(len(train), min(count, len(train)), replace=False)
    return train.subset(np.sort(chosen))


def _image_batches(datamodule, images, batch_size: int = 64):
    """Batches of `images` with the eval transform (what the exported model is fed), as (numpy NCHW, labels)."""
    loader = torch.utils.data.DataLoader(
        TransformedImages(images, datamodule.eval_transform), batch_size=batch_size, num_workers=datamodule.num_workers
    )
    for x, y in loader:
        yield x.float().contiguous().numpy(), y.numpy()


def quantize_int8(float_file: Path, written: Path, int8: Int8, path: Path) -> dict:
    """Quantise the float ONNX graph `float_file` into `written`, calibrated on training images, then check it on
    the test split against the float graph; the card's `quantization` entry. A model that loses more than
    `int8.max_drop` points is an error with the figures (`path`, the name it was meant for, is left as it was)."""
    ort = onnx_module("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    images = calibration_images(int8.datamodule, int8.calibration_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = _image_batches(int8.datamodule, images, batch_size=32)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {INPUT: x[0]}

    log.info("int8: calibrating on %d training images (eval transform)", len(images))
    with onnxruntime_info_hidden():
        quantize_static(
            str(float_file),
            str(written),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    check = check_int8(float_file, written, int8, path)
    return {
        **QUANTIZATION,
        "calibration": {
            "split": "train",
            "images": len(images),
            "asked": int8.calibration_images,
            "transform": "eval",
            "seed": CALIBRATION_SEED,
        },
        "check": check,
        "onnxruntime": ort.__version__,
    }


def check_int8(float_file: Path, int8_file: Path, int8: Int8, path: Path) -> dict:
    """The int8 model against the float graph on the run's test split: accuracy of each, the drop (points, with a
    paired bootstrap interval), top-1 agreement (Wilson); an error above `int8.max_drop` points."""
    test = int8.datamodule.splits["test"]
    log.info("int8: checking against the float model on %d test images", len(test))
    float_run, int8_run = _onnx_session(float_file), _onnx_session(int8_file)
    labels, float_top, int8_top, diff = [], [], [], 0.0
    for x, y in _image_batches(int8.datamodule, test):
        a, b = float_run(x), int8_run(x)
        diff = max(diff, float(np.abs(a - b).max()))
        labels.append(y)
        float_top.append(a.argmax(1))
        int8_top.append(b.argmax(1))
    labels, float_top, int8_top = np.concatenate(labels), np.concatenate(float_top), np.concatenate(int8_top)
    n = len(labels)
    float_right, int8_right = float_top == labels, int8_top == labels
    float_acc, int8_acc = wilson(int(float_right.sum()), n), wilson(int(int8_right.sum()), n)
    drop = paired_difference(float_right, int8_right)  # acc(float) - acc(int8), on the same images
    agree = wilson(int((float_top == int8_top).sum()), n)
    figures = {
        "split": "test",
        "images": n,
        "float_acc": float_acc.as_dict(),
        "int8_acc": int8_acc.as_dict(),
        "drop_points": round(100 * drop.value, 2),
        "drop_points_interval": [round(100 * v, 2) if v is not None else None for v in (drop.low, drop.high)],
        "agreement": agree.as_dict(),
        "max_drop": float(int8.max_drop),
        "max_abs_diff": diff,
    }
    if not 100 * drop.value <= int8.max_drop:  # NaN (no test images) fails too
        one = f" (one image is {100 / n:.2g} points here)" if n and 100 / n > int8.max_drop / 2 else ""
        low, high = figures["drop_points_interval"]
        interval = f" (95% interval [{low:+.2f}, {high:+.2f}])" if low is not None else ""
        raise ConfigError(
            f"the int8 model loses {100 * drop.value:.2f} points of test accuracy{interval} on {n} test images, "
            f"more than max_drop={int8.max_drop:g}{one}: float {float_acc.text(on=False)}, "
            f"int8 {int8_acc.text(on=False)}; top-1 agreement {agree.text(on=False)}. {path} is left as it was. "
            f"Calibrate on more training images (calibration_images=, now {int8.calibration_images}), allow a "
            "larger drop (max_drop=), or export the float model (format=onnx without quantize)."
        )
    return figures


def _onnx_session(path: Path):
    ort = onnx_module("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT: x})[0]


def run_datamodule(ckpt: Path, module):
    """The DataModule of the checkpoint's run, from its config.yaml (the nearest one in the checkpoint's folder or
    the few above it, as for metrics.json): the same splits the run trained and tested on, the model's own
    preprocessing, set up."""
    found = find_metrics(ckpt, name=RUN_CONFIG)
    if found is None:
        raise ConfigError(
            f"quantize=int8 calibrates on the run's training images and checks on its test images, but no run "
            f"{RUN_CONFIG} was found next to {ckpt} or in the {METRICS_LEVELS - 1} folders above it. Export the "
            "checkpoint from its run folder (<run>/checkpoints/), or export without quantize."
        )
    cfg = OmegaConf.load(found)
    datamodule = build_datamodule(cfg, module.eval_preprocessing(), num_workers=cfg.data.get("num_workers", 0))
    datamodule.setup()
    if datamodule.class_names != list(module.class_names):
        raise DataError(
            f"the checkpoint was trained on classes {list(module.class_names)}, but its run's dataset ({found}) "
            f"now has {datamodule.class_names}; int8 calibration needs the run's own images."
        )
    for split in ("train", "test"):
        if len(datamodule.splits.get(split, ())) == 0:
            raise DataError(f"the run's dataset ({found}) has no {split} images; quantize=int8 needs train and test.")
    return datamodule


def unknown_for_card(checkpoint: str | None) -> dict | None:
    record = unknown_inputs.from_checkpoint(checkpoint) if checkpoint else None
    return unknown_inputs.for_logits(unknown_inputs.without_bank(record)) if record else None


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
        # predict's 'unknown' threshold, chosen on val at training time, as a logits-only graph can use it
        "unknown": unknown_for_card(checkpoint),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tlexp": __version__, "torch": torch.__version__},
    }


def find_metrics(ckpt: Path, levels: int = METRICS_LEVELS, name: str = "metrics.json") -> Path | None:
    """The run's metrics.json (or `name`): in the nearest of the checkpoint's folder and the few above it holding one.

    A plain run keeps it two folders up (<run>/checkpoints/), a strategy=auto winner four
    (<run>/pilots/<winner>/checkpoints/); the pilot dirs hold none.
    """
    for folder in list(Path(ckpt).expanduser().absolute().parents)[:levels]:
        if (folder / name).is_file():
            return folder / name
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
    quantize = cfg.get("quantize")
    if quantize is not None and (quantize != INT8 or cfg.format != "onnx"):
        raise ConfigError(f"quantize={quantize}: quantize=int8 goes with format=onnx (now format={cfg.format}).")
    stem = f"{ckpt.stem}.int8" if quantize else ckpt.stem  # beside the float export, not over it
    out = Path(cfg.out).expanduser() if cfg.get("out") else run_dir_of(ckpt) / "export" / f"{stem}{FORMATS[cfg.format]}"
    check_out_suffix(out, cfg.format)
    check_writable(out.parent, f"Pass out=<a writable path>/model{FORMATS[cfg.format]} (now {out}).")
    if quantize:  # before the model is read: the quantiser and the check need onnxruntime
        onnx_module("onnx")
        onnx_module("onnxruntime")
    module = load_trained(ckpt)
    int8 = None
    if quantize:
        int8 = Int8(run_datamodule(ckpt, module), int(cfg.calibration_images), float(cfg.max_drop))
    card = export(module, cfg.format, out, training_summary(ckpt), str(ckpt), int8)
    print(describe(card, out), flush=True)
    return card


def describe(card: dict, out: Path) -> str:
    lines = [
        f"  exported  {out} ({card['format']}{', int8' if 'quantization' in card else ''}, "
        f"{out.stat().st_size / 1e6:.1f} MB)",
        f"  card      {sidecar_path(out)}",
        f"  classes   {len(card['class_names'])}, input {card['input']['shape']}",
    ]
    q = card.get("quantization")
    if q is None:
        lines.append(f"  checked   max |exported - checkpoint| = {card['max_abs_diff']:.2e}")
    else:
        c = q["check"]
        low, high = c["drop_points_interval"]
        lines += [
            f"  float     graph checked: max |float - checkpoint| = {q['float_graph_max_abs_diff']:.2e}",
            f"  int8      {q['format']}, weights {q['weights']}; {q['calibration_method']} ranges from "
            f"{q['calibration']['images']} training images",
            f"  checked   on {c['images']} test images: accuracy {c['float_acc']['value']:.4f} (float) -> "
            f"{c['int8_acc']['value']:.4f} (int8), drop {c['drop_points']:+.2f} points [{low:+.2f}, {high:+.2f}] "
            f"(max_drop {c['max_drop']:g}); top-1 agreement {100 * c['agreement']['value']:.1f}%",
        ]
    return "\n" + "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_args(sys.argv[1:] if argv is None else argv, "export", __doc__))


if __name__ == "__main__":
    main()
