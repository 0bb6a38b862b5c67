"""Load a trained model for inference: a Lightning checkpoint, an ONNX file or a TorchScript file.

Each comes with its class names and preprocessing: a checkpoint holds them in its hyperparameters,
an exported file in the sidecar JSON written next to it (`model.onnx` -> `model.onnx.json`). The 'unknown'
threshold (evaluation/unknown.py) comes from the checkpoint's `tlexp_unknown` key, or the card's `unknown`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlexp.config.errors import ConfigError
from tlexp.evaluation.unknown import for_logits, from_checkpoint, verdict

from .preprocessing import Preprocessing

CHECKPOINT, ONNX, TORCHSCRIPT = ".ckpt", ".onnx", ".pt"


@dataclass
class Classifier:
    """A normalised image batch -> logits function, with what it needs around it."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    preprocessing: Preprocessing
    kind: str
    unknown: dict | None = None  # the val-chosen threshold under which an input is `unknown` (None: not known)
    module: Any = None  # the TransferModule of a checkpoint (Grad-CAM needs its gradients); None for exports
    # batch -> (features the head sees, logits): the knn score measures the features; None for exports
    features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def transform(self):
        return self.preprocessing.eval_transform()

    def judge(self, x: torch.Tensor, tta: bool = False, unknown: bool = True) -> Judged:
        """Class probabilities of a preprocessed batch (`tta`: averaged with the mirror image's), and, where the
        model has an unknown threshold and `unknown` is asked, each image's score and whether it falls under it.
        The score is always the plain image's: the threshold was chosen on plain val images."""
        use = unknown and self.unknown is not None
        features, logits = None, None
        if use and self.unknown["score"] == "knn" and self.features is not None:
            features, logits = self.features(x)
        logits = (self.forward(x) if logits is None else logits).float()
        probs = logits.softmax(dim=1)
        if tta:  # average with the mirror image: the flip is in the training augmentation
            probs = (probs + self.forward(x.flip(dims=[3])).float().softmax(dim=1)) / 2
        if not use:
            return Judged(probs)
        scores, rejected = verdict(logits, self.unknown, features)
        return Judged(probs, scores, rejected)


@dataclass
class Judged:
    """What a model says about a batch: probabilities [N, C]; the unknown score and verdict [N] when asked."""

    probs: torch.Tensor
    scores: torch.Tensor | None = None
    rejected: torch.Tensor | None = None


def sidecar_path(model_file: Path) -> Path:
    return Path(f"{model_file}.json")


def where_the_model_is(missing: Path) -> str:
    """Where to find a run's model: the checkpoint its metrics.json names (a strategy=auto run trains its winner
    in pilots/<winner>/, not in <run>/checkpoints/), else the usual places."""
    for folder in (missing.parent, *missing.parents[:3]):
        metrics = folder / "metrics.json"
        if metrics.is_file():
            with contextlib.suppress(OSError, ValueError):
                best = json.loads(metrics.read_text()).get("checkpoint")
                if best and Path(best).is_file():
                    return f"The best checkpoint of the run in {folder} is {best}: pass ckpt={best}"
    return (
        "Point ckpt= at the 'best checkpoint' a run printed (also metrics.json's `checkpoint`): "
        "<run>/checkpoints/best-*.ckpt, or <run>/pilots/<strategy>/checkpoints/best-*.ckpt for strategy=auto."
    )


def load_trained(path: Path | str):
    """A TransferModule from a tlexp checkpoint, in eval mode on the CPU; one clear error when it is not one."""
    from .module import load_module  # here, not at the top: ONNX/TorchScript users need no timm model code

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist. {where_the_model_is(path)}")
    try:
        module = load_module(str(path))
    except Exception as err:  # noqa: BLE001 - torch.load of a wrong file fails in many ways (pickle, zip, keys)
        raise ConfigError(
            f"{path} is not a tlexp checkpoint ({type(err).__name__}: {str(err)[:200]}). Use a .ckpt file written "
            "by `python -m tlexp.train` (under <run>/checkpoints/)."
        ) from err
    return module.eval()


def load_classifier(path: Path | str) -> Classifier:
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == CHECKPOINT:
        module = load_trained(path)

        @torch.inference_mode()
        def forward(x: torch.Tensor) -> torch.Tensor:
            return module(x)

        @torch.inference_mode()
        def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            found = module.backbone(x)
            return found, module.head(found)

        pre, unknown = module.eval_preprocessing(), from_checkpoint(path)
        return Classifier(forward, list(module.class_names), pre, "checkpoint", unknown, module, features)
    if suffix not in (ONNX, TORCHSCRIPT):
        raise ConfigError(
            f"{path}: unknown model file type '{suffix}'. Use a .ckpt checkpoint, or a .onnx / .pt export."
        )
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist.")
    card_file = sidecar_path(path)
    if not card_file.is_file():
        raise ConfigError(
            f"{path} has no sidecar {card_file.name} next to it; it holds the class names and preprocessing. "
            "Copy it along with the model, or export again with `python -m tlexp.export`."
        )
    card = json.loads(card_file.read_text())
    forward = exported_forward(path, suffix, card["input_name"])
    pre = Preprocessing.from_dict(card["preprocessing"])
    unknown = card.get("unknown") or _run_unknown(card)
    # An exported graph gives logits only: a knn record decides by the energy score's threshold instead.
    return Classifier(forward, card["class_names"], pre, suffix.lstrip("."), unknown and for_logits(unknown))


def _run_unknown(card: dict) -> dict | None:
    """A card without `unknown`: the threshold in its run's metrics.json, when that run's best checkpoint is the
    file the model was exported from (the threshold belongs to those weights)."""
    metrics_file = (card.get("training") or {}).get("metrics_file")
    if not metrics_file or not card.get("checkpoint"):
        return None
    with contextlib.suppress(OSError, ValueError):
        metrics = json.loads(Path(metrics_file).read_text())
        if metrics.get("checkpoint") and Path(metrics["checkpoint"]).resolve() == Path(card["checkpoint"]).resolve():
            return metrics.get("unknown")
    return None


def exported_forward(path: Path, suffix: str, input_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of an exported file written as `suffix` (.onnx / .pt), whatever the file is named."""
    return _onnx_forward(path, input_name) if suffix == ONNX else _torchscript_forward(path)


def onnx_module(name: str):
    """Import `onnx` or `onnxruntime`; they are the optional `export` extra, so say how to get them when missing."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(
            f'{name} is not installed; ONNX export and .onnx models need it: pip install "tlexp[export]"'
        ) from err


def _onnx_forward(path: Path, input_name: str):
    ort = onnx_module("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.float().contiguous().numpy()})[0])

    return forward


def _torchscript_forward(path: Path):
    with warnings.catch_warnings():  # torch.jit is deprecated for new work, still fine for loading (see export.py)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.")
        model = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return forward
