"""The Python API: `tlexp.fit` trains as `python -m tlexp.train` does, `tlexp.load` gives a model to predict with.

    import tlexp
    run = tlexp.fit(strategy="feature_extraction", dataset="synthetic")
    model = tlexp.load(run.checkpoint)
    model.predict(["photo.jpg", "other.png"])      # class names, or "unknown"

`fit` composes the real config (conf/train.yaml) with Hydra's compose API, checks it as the command line does
(`run.build.check_config`), claims the run directory the command line would, and runs `tlexp.train.train`: the same
run directory, metrics.json, checkpoints and report. Errors raise tlexp's own exceptions (`tlexp.TlexpError`: a
`ConfigError`, `DataError`, ...) with the command line's one-line messages; nothing calls `sys.exit`, and no Hydra
state is left behind, so it can be called again in the same process (a notebook).

Lightning, torch and Hydra are imported inside the functions: `import tlexp` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlexp.config.errors import DISK_ERRNOS, ConfigError, DataError, Stopped, out_of_space

if TYPE_CHECKING:
    import numpy as np
    import torch
    from omegaconf import DictConfig

    from tlexp.model.inference import Classifier, Judged

CONFIG = "train"
UNKNOWN = "unknown"  # the label predict gives an image under the model's confidence threshold


# ---------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitResult:
    """What `tlexp.fit` returns: the run's metrics (metrics.json) and its directory."""

    metrics: dict
    run_dir: Path

    @property
    def checkpoint(self) -> Path | None:
        """The best checkpoint (chosen on val), None when no validation ran."""
        found = self.metrics.get("checkpoint")
        return Path(found) if found else None

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics.get("test") or {}).get("acc")

    def load(self) -> Model:
        """The best checkpoint as a `Model` (`tlexp.load(run.checkpoint)`)."""
        return load(self)

    def __repr__(self) -> str:
        acc = self.test_accuracy
        shown = "" if acc is None else f", test_accuracy={acc:.4f}"
        return f"FitResult(run_dir={str(self.run_dir)!r}{shown}, checkpoint={str(self.checkpoint)!r})"


def fit(*overrides: str, **values: Any) -> FitResult:
    """Train one configuration, as `python -m tlexp.train <overrides>` does; returns its metrics and run directory.

    Overrides as Hydra strings, `fit("strategy=gradual", "model=resnet50")`, and/or keyword arguments,
    `fit(strategy="feature_extraction", dataset="imagefolder", **{"dataset.root": "~/photos"})`. A keyword's
    string is read as on the command line (`seed="3"` is the number 3); one that Hydra cannot read unquoted (a
    path with `~`, a space or a comma) is quoted for it. Numbers, booleans, None, lists and dicts are passed as
    they are. `output_dir=` names the run directory (default: outputs/<date>/<time>_<strategy>_<model>, as the
    command line); `resume=<run dir>` continues an interrupted run.

    Raises `tlexp.ConfigError` (a bad key or value, a directory that holds a run), `tlexp.DataError`,
    `tlexp.WeightsUnavailable`, ... with the command line's message; a sweep (`strategy=a,b`) is refused:
    `python -m tlexp.compare` or `python -m tlexp.train -m` run those.
    """
    args = [*map(str, overrides), *(to_override(k, v) for k, v in values.items())]
    _refuse_sweeps(args)
    from tlexp.config.cli import compose_config

    cfg = compose_config(CONFIG, args)
    if cfg.get("resume"):
        return _resume(cfg, args)
    from tlexp.run.build import check_config

    check_config(cfg)  # every value, the model name, the dataset location: before a directory is claimed
    out = _claim(cfg, args)
    return _train(cfg, out)


def _resume(cfg: DictConfig, args: list[str]) -> FitResult:
    from tlexp.run.resume import check_resume_overrides

    check_resume_overrides(args)
    out = Path(str(cfg.resume)).expanduser().absolute()
    return _train(cfg, out)


def _claim(cfg: DictConfig, args: list[str]) -> Path:
    """The run directory the command line would take: the one named (output_dir= or hydra.run.dir=), claimed as
    it is, or the default timestamped one (`_2`, ... when taken)."""
    from tlexp.run.claim import claim, claim_free, default_run_dir

    named = _named_dir(cfg, args)
    if named is not None:
        claim(named)
        return named.absolute()
    return claim_free(Path(default_run_dir(args))).absolute()


def _named_dir(cfg: DictConfig, args: list[str]) -> Path | None:
    node = cfg._get_node("output_dir")
    raw = node._value() if node is not None else None
    if isinstance(raw, str) and not raw.startswith("${hydra:"):
        return Path(raw).expanduser()
    if any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in args):
        from tlexp.config.cli import compose_config

        return Path(str(compose_config(CONFIG, args, hydra=True).hydra.run.dir)).expanduser()
    return None


def _train(cfg: DictConfig, out: Path) -> FitResult:
    from omegaconf import open_dict

    from tlexp.run.claim import abandon
    from tlexp.train import train

    with open_dict(cfg):
        cfg.output_dir = str(out)
    try:
        metrics = train(cfg)
    except OSError as err:  # as the command line: a full or read-only disk is one message
        if err.errno not in DISK_ERRNOS:
            raise
        raise out_of_space(err) from err
    except SystemExit as stop:  # Lightning's SIGTERM handling ends in sys.exit; a notebook gets an exception
        raise Stopped(
            f"training in {out} was stopped (exit status {stop.code}); its last.ckpt is kept: "
            f'tlexp.fit(resume="{out}") continues it.'
        ) from stop
    finally:
        abandon(out)  # a run refused before it wrote its config.yaml leaves no directory behind
    return FitResult(metrics, out)


def _refuse_sweeps(args: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException:
        return  # composing gives the message (with the quoted form to copy)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise ConfigError(
            f"{' '.join(sweeps)}: tlexp.fit trains one configuration; for a sweep call it once per value, or run "
            "`python -m tlexp.train -m ...` / `python -m tlexp.compare ...`."
        )


def to_override(key: str, value: Any) -> str:
    """A keyword argument of `fit` as a Hydra override string."""
    return f"{key}={_value(value)}"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, os.PathLike):
        return _quoted(os.fspath(value))
    if isinstance(value, str):
        return value if _reads_unquoted(value) else _quoted(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Iterable):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"a {type(value).__name__} cannot be a config value: pass a string, number, list or dict.")


def _reads_unquoted(text: str) -> bool:
    """Whether `key=<text>` is one plain value to Hydra's grammar (not a sweep, list or dict, and parses)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not text or text.strip() != text:
        return False
    try:
        parsed = OverridesParser.create().parse_override(f"key={text}")
    except HydraException:
        return False
    return not parsed.is_sweep_override() and not isinstance(parsed.value(), (list, dict))


def _quoted(text: str) -> str:
    """`text` as a Hydra quoted string: single quotes, with quotes and the backslashes before them escaped."""
    out, backslashes = [], 0
    for ch in text:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # before the closing quote
    return "'" + "".join(out) + "'"


# ---------------------------------------------------------------- load and predict


def load(path: str | os.PathLike | FitResult) -> Model:
    """A trained model from a checkpoint (.ckpt), an ONNX (.onnx) or TorchScript (.pt) export (with its .json card
    beside it), a run directory (its best checkpoint) or a `FitResult`."""
    from tlexp.model.inference import load_classifier, where_the_model_is

    if isinstance(path, FitResult):
        if path.checkpoint is None:
            raise ConfigError(f"the run in {path.run_dir} has no best checkpoint (no validation ran): nothing to load.")
        path = path.checkpoint
    found = Path(path).expanduser()
    if found.is_dir():
        metrics = found / "metrics.json"
        best = json.loads(metrics.read_text()).get("checkpoint") if metrics.is_file() else None
        if not best:
            raise ConfigError(f"{found} is a folder with no finished run's metrics.json. {where_the_model_is(found)}")
        # The path as the run wrote it: relative to where it ran (outputs/...), or the run moved since; then the
        # file of that name in this run directory.
        moved = [p for p in found.glob(f"**/checkpoints/{Path(best).name}") if p.is_file()]
        found = Path(best) if Path(best).is_file() or not moved else moved[0]
    return Model(load_classifier(found), found)


class Model:
    """A trained classifier: `classes`, `predict`, `predict_proba`, `score`, `explain`.

    `images` is one image or a list of them: file paths, PIL images, numpy arrays (HxW grey, HxWxC, or a batch
    NxHxWxC / NxHxW; uint8, or floats in [0, 1]) or torch tensors (CxHxW, or a batch NxCxHxW). Each goes through
    the model's own preprocessing (resize, centre crop, normalisation), in batches of `batch_size`.
    """

    def __init__(self, classifier: Classifier, source: Path):
        self._classifier, self.source = classifier, Path(source)

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of `predict_proba`'s columns."""
        return list(self._classifier.class_names)

    @property
    def kind(self) -> str:
        """checkpoint, onnx or pt."""
        return self._classifier.kind

    @property
    def preprocessing(self) -> dict:
        """Input size, mean, std, interpolation and crop_pct, as the model was trained."""
        return self._classifier.preprocessing.as_dict()

    @property
    def unknown(self) -> dict | None:
        """The confidence score and threshold chosen on val at training (None for models trained before it)."""
        from tlexp.evaluation.unknown import without_bank

        return without_bank(self._classifier.unknown)

    def predict(self, images, *, unknown: bool = True, tta: bool = False, batch_size: int = 32) -> list[str]:
        """The top class of each image; "unknown" where its score falls under the model's threshold (`unknown=False`:
        always the top class). `tta`: probabilities averaged with the mirror image's."""
        labels = []
        for judged in self._judge(images, batch_size, tta, unknown):
            top = judged.probs.argmax(dim=1).tolist()
            rejected = judged.rejected.tolist() if judged.rejected is not None else [False] * len(top)
            labels += [UNKNOWN if r else self.classes[i] for i, r in zip(top, rejected, strict=True)]
        return labels

    def predict_proba(self, images, *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """Class probabilities, one row per image, columns in the order of `classes`."""
        import numpy as np

        rows = [j.probs.numpy() for j in self._judge(images, batch_size, tta, False)]
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, len(self.classes)), np.float32)

    def score(self, images, *, batch_size: int = 32) -> np.ndarray:
        """The confidence score of each image (the one the threshold is on: `model.unknown["score"]`)."""
        import numpy as np

        if not self.unknown:
            raise ConfigError(f"{self.source} holds no unknown threshold (trained before tlexp chose one): no score.")
        return np.concatenate([j.scores.numpy() for j in self._judge(images, batch_size, False, True)])

    def explain(self, images, *, target: int | str | None = None, batch_size: int = 32) -> np.ndarray:
        """Grad-CAM maps (N x H x W, in [0, 1], at the model's input size: after its resize and centre crop) of the
        class `target` (a name or index; default: each image's top class). Checkpoints only."""
        import numpy as np
        import torch

        from tlexp.evaluation.gradcam import gradcam

        module = self._classifier.module
        if module is None:
            raise ConfigError(f"explain needs a .ckpt checkpoint: {self.source} is an exported {self.kind} graph.")
        index = self.classes.index(target) if isinstance(target, str) else target
        maps = []
        for x in self._batches(images, batch_size):
            wanted = None if index is None else torch.full((len(x),), int(index))
            maps.append(gradcam(module, x, wanted)[0].numpy())
        return np.concatenate(maps)

    def __repr__(self) -> str:
        return f"Model({str(self.source)!r}, kind={self.kind!r}, classes={self.classes})"

    # ------------------------------------------------------------ images -> batches

    def _judge(self, images, batch_size: int, tta: bool, unknown: bool) -> list[Judged]:
        import torch

        with torch.inference_mode():
            return [self._classifier.judge(x, tta, unknown) for x in self._batches(images, batch_size)]

    def _batches(self, images, batch_size: int):
        import torch

        transform = self._classifier.transform()
        pictures = as_pictures(images)
        for start in range(0, len(pictures), max(1, int(batch_size))):
            yield torch.stack([transform(p) for p in pictures[start : start + batch_size]])


def as_pictures(images) -> list:
    """`images` (one or many: paths, PIL images, arrays, tensors) as a list of RGB PIL images."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [_picture(images)]
    if isinstance(images, np.ndarray):
        return [_picture(a) for a in _split_array(images)]
    if isinstance(images, torch.Tensor):
        return [_picture(a) for a in _split_array(_tensor_as_hwc(images))]
    if isinstance(images, Iterable):
        return [p for item in images for p in as_pictures(item)]
    raise DataError(f"cannot read a {type(images).__name__} as an image: give paths, PIL images, arrays or tensors.")


def _tensor_as_hwc(t: torch.Tensor) -> np.ndarray:
    """CxHxW (or NxCxHxW) tensor -> HxWxC (NxHxWxC) array; a 2-D one is HxW grey."""
    a = t.detach().cpu().numpy()
    if a.ndim == 3:
        return a.transpose(1, 2, 0)
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    return a


def _split_array(a: np.ndarray) -> list[np.ndarray]:
    """One image (HxW, HxWxC with C in 1, 3, 4) or a batch (NxHxWxC, NxHxW) as a list of images."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return [a]
    if a.ndim in (3, 4):
        return list(a)
    raise DataError(f"an array of shape {tuple(a.shape)} is not an image or a batch of images (HxWxC or NxHxWxC).")


def _picture(item):
    import numpy as np
    from PIL import Image

    from tlexp.data.images import BadImage, open_rgb, to_rgb

    if isinstance(item, (str, os.PathLike)):
        try:
            return open_rgb(Path(item).expanduser())
        except BadImage as err:
            raise DataError(f"{err}. Give image files that exist and are not empty or truncated.") from None
    if isinstance(item, Image.Image):
        return to_rgb(item)
    a = np.asarray(item)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) or a.size == 0:
            raise DataError(f"an array of {a.dtype} is not an image: give uint8 pixels or floats in [0, 1].")
        a = (np.clip(a.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return to_rgb(Image.fromarray(a))
