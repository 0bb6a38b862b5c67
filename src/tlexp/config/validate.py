"""One validation pass over every user-facing config key, before any weights or data are loaded.

`RULES` is a declarative table: key -> type, range or allowed values, and a good example. `validate_config`
checks every key of the table that the composed config holds (train, inspect, advise, compare, evaluate,
predict, export: each CLI's config holds its own subset), plus the few checks that span keys, and reports
every problem in one ConfigError, each line naming the key, the bad value, what is allowed and a fix.

Why a table and not Hydra structured configs: the configs are plain YAML groups that users copy and extend
(their own phase lists, any lightning.Trainer argument under `trainer.*`), and a schema would need a dataclass
per group and choice that repeats every default; its errors also stop at the first bad value and speak
OmegaConf ("Value 'abc' of type 'str' could not be converted to Integer"), not the fix.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tlexp.conf import CONF

from .errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a predicate, its wording ('an integer >= 1'), a good example, values it refuses."""

    ok: Callable[[Any], bool]
    allowed: str
    example: Any
    bad: tuple = ()  # the fuzz tests try every one of these against every key

    def __or__(self, other: Rule) -> Rule:
        def ok(v):
            return self.ok(v) or other.ok(v)

        bad = tuple(v for v in (*self.bad, *other.bad) if not ok(v))
        return Rule(ok, f"{self.allowed} or {other.allowed}", self.example, bad)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bound(lo, hi, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def integer(lo: int | None = None, hi: int | None = None, example: int = 1) -> Rule:
    """A whole number in [lo, hi]."""

    def ok(v):
        return _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    bad = ("abc", 1.5, True, *([lo - 1] if lo is not None else []), *([hi + 1, 10**12] if hi is not None else []))
    bound = _bound(lo, hi, False, False)
    return Rule(ok, f"an integer{' ' + bound if bound else ''}", example, tuple(v for v in bad if not ok(v)))


def number(lo=None, hi=None, example: float = 1.0, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite number between lo and hi (each bound open or closed)."""

    def ok(v):
        if not _is_number(v):
            return False
        above = lo is None or (v > lo if lo_open else v >= lo)
        return above and (hi is None or (v < hi if hi_open else v <= hi))

    bad = ("lots", float("nan"), *([lo - 1, lo] if lo is not None else []), *([hi, hi + 1, 1e12] if hi else []))
    bound = _bound(lo, hi, lo_open, hi_open)
    return Rule(ok, f"a number{' ' + bound if bound else ''}", example, tuple(v for v in bad if not ok(v)))


def choice(*values, example=None) -> Rule:
    """One of `values` (compared as given, so `true` is not 'true')."""
    bad = tuple(v for v in ("banana", 7) if v not in values)
    return Rule(
        lambda v: v in values,
        "one of " + ", ".join(dict.fromkeys(map(str, values))),
        values[0] if example is None else example,
        bad,
    )


def boolean(example: bool = True) -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false", example, ("maybe", 2))


def text(example: str) -> Rule:
    """A name or a path: any string (a number is taken as its string, as Hydra parses `dataset.root=2024`)."""
    return Rule(lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), "a string", example, ([1, 2],))


def numbers(n: int, lo=None, hi=None, example=None, lo_open: bool = False) -> Rule:
    """A list of `n` numbers, each between lo and hi."""
    each = number(lo, hi, lo_open=lo_open)

    def ok(v):
        return isinstance(v, list) and len(v) == n and all(each.ok(x) for x in v)

    return Rule(ok, f"a list of {n} numbers, each {each.allowed.removeprefix('a number ')}", example, ("abc", [1], 5))


def names(example: list, allowed: tuple[str, ...] | None = None, item: Rule | None = None) -> Rule:
    """A non-empty list, each item one of `allowed` (or passing `item`)."""
    each = item or choice(*allowed)

    def ok(v):
        return isinstance(v, list) and len(v) > 0 and all(each.ok(x) for x in v)

    return Rule(ok, f"a non-empty list, each item {each.allowed}", example, ("abc", [], ["banana"], 3))


NULL = Rule(lambda v: v is None, "null", None)
AUTO = choice("auto")


def config_names(group: str, but: str | None = None) -> tuple[str, ...]:
    """The configs of a group in conf/ (strategies, models), less `but`."""
    return tuple(sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != but))


def _lightning_precisions() -> tuple:
    """Lightning's accepted `precision` values (its own Literal types), plus tlexp's `auto`."""
    from typing import get_args

    from lightning.fabric.plugins.precision import precision as p

    return (
        "auto",
        *get_args(p._PRECISION_INPUT_STR),
        *get_args(p._PRECISION_INPUT_INT),
        *get_args(p._PRECISION_INPUT_STR_ALIAS),
    )


def _lightning_strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


class _Lazy:
    """A rule whose allowed set comes from a library, imported the first time the key is present."""

    def __init__(self, values: Callable[[], tuple], example):
        self.values, self.example, self._rule = values, example, None

    def rule(self) -> Rule:
        if self._rule is None:
            self._rule = choice(*self.values(), example=self.example)
        return self._rule


def _devices_ok(v) -> bool:
    if _is_int(v):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v in ("auto", "-1") or re.fullmatch(r"\d+(\s*,\s*\d*)*", v) is not None
    return isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)


DEVICES = Rule(
    _devices_ok, "an integer >= 1, -1 (all), auto, or a list of device indices like [0, 1]", 1, (0, -2, "abc", [], 1.5)
)
FRACTION = number(0, 1, example=0.15, hi_open=True)
PROBABILITY = number(0, 1, example=0.5)
BATCHES = number(0, 1, example=1.0) | integer(0, example=2)
PREPROCESS = {
    "image_size": integer(8, 4096, example=224) | NULL,
    "mean": numbers(3, 0, 1, example=[0.485, 0.456, 0.406]) | NULL,
    "std": numbers(3, 0, example=[0.229, 0.224, 0.225], lo_open=True) | NULL,
    "interpolation": choice("bilinear", "bicubic", "nearest") | NULL,
    "crop_pct": number(0, 1, example=0.875, lo_open=True) | NULL,
}
OPTIMIZE_METRICS = ("best_val_acc", "fit_seconds")  # fit_seconds: with hydra.sweeper.direction=minimize
HEAD_INITS = ("none", "probe")  # run.build.init_head


def _rules() -> dict[str, Rule | _Lazy]:
    """The table. Values come from the code that consumes each key (named in the comment where not obvious)."""
    from tlexp.data.balance import BALANCE
    from tlexp.features.cache import MODES
    from tlexp.model.module import OPTIMIZERS
    from tlexp.model.phases import BN_MODES, FREEZE_MODES, SCHEDULES

    rules: dict[str, Rule | _Lazy] = {
        # ---- train.yaml (and inspect/advise/compare, which compose it)
        "seed": integer(0, 2**32 - 1, example=42),  # Lightning's seed_everything range
        "freeze_mode": choice(*FREEZE_MODES),
        "epoch_scale": number(0, example=0.5, lo_open=True),
        # what train.objective hands a sweeper: a key of metrics.json that every run writes, never a test figure
        "optimize_metric": Rule(
            lambda v: v in OPTIMIZE_METRICS,
            f"one of {', '.join(OPTIMIZE_METRICS)} (keys of metrics.json; a sweep never selects on the test set)",
            "best_val_acc",
            ("test.acc", "best_val_accuracy", 3),
        ),
        "channels_last": AUTO | boolean(),
        "compile": boolean(False),
        "threads": AUTO | integer(1, example=2),  # accel.resolve_threads
        "linear_probe": boolean(False),
        "lr_find": boolean(False),
        "output_dir": text("outputs/my_run"),
        "resume": text("outputs/2024-05-01/12-00-00_gradual_efficientnet_lite0") | NULL,
        "resume_from": choice("last", "best"),  # which checkpoint of the resumed run: last.ckpt or the best one
        "optimizer.name": choice(*OPTIMIZERS),
        "optimizer.weight_decay": number(0, example=1e-4),
        "optimizer.momentum": number(0, 1, example=0.9),
        "optimizer.label_smoothing": number(0, 1, example=0.1, hi_open=True),  # CrossEntropyLoss
        "ema": number(0, 1, example=0.1),  # the weight EMA's time constant, a fraction of the schedule's steps
        "data.batch_size": integer(1, example=32),
        "data.num_workers": integer(0, example=4) | AUTO,
        "data.on_bad_image": choice("skip", "error"),
        "data.balance": choice(*BALANCE),
        "data.background": Rule(
            lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in v),
            "a list of 3 integers in 0..255 (RGB)",
            [255, 255, 255],
            ("white", [1, 2], [0, 0, 256]),
        ),
        "data.drop_leaks": boolean(),
        "data.preflight_cache": text("~/.cache/tlexp/preflight") | NULL,
        "data.augment_on": choice("cpu", "device"),
        "data.exclude": text("outputs/audit/reviewed.txt") | NULL,
        "cv.folds": Rule(
            lambda v: _is_int(v) and (v == 0 or 2 <= v <= 100),
            "0 (off) or an integer 2..100",
            5,
            (1, -1, "five", 101),
        ),
        "cv.repeats": integer(1, 100, example=2),
        "cv.fold": integer(0, example=0) | NULL,
        "augment.scale_min": number(0, 1, example=0.5, lo_open=True),  # RandomResizedCrop scale=(scale_min, 1)
        "augment.hflip": PROBABILITY,
        "augment.rotation": number(0, 180, example=10),
        "augment.color_jitter": number(0, example=0.2),
        "augment.enabled": boolean(),
        "cache.mode": choice(*MODES),
        "cache.views": integer(0, example=4),
        "cache.dir": text("~/.cache/tlexp/features"),
        "report.enabled": boolean(),
        "report.temperature": boolean(),
        "report.top_losses": integer(0, example=16),
        "report.gradcam": boolean(),
        "report.unknown_reject": number(0, 0.5, example=0.05),  # evaluation/unknown.py: the share of val rejected
        "report.unknown_score": choice("knn", "energy", "msp"),  # evaluation.unknown.SCORES
        "report.train_batch_preview": integer(0, example=32),
        **{f"preprocess.{k}": r for k, r in PREPROCESS.items()},
        # ---- model/*.yaml (model.name is checked against timm by backbones.check_model_name)
        "model.name": text("tf_efficientnet_lite0"),
        "model.short": text("efficientnet_lite0"),
        "model.weights": text("imagenet"),  # imagenet | bundled | none | a path: weights.py says what is missing
        "model.head_dropout": FRACTION,
        # ---- strategy/*.yaml (the phase list: phases.check_strategy, in _cross_checks)
        "strategy.name": text("gradual"),
        "strategy.pretrained": boolean(),
        "strategy.schedule": choice(*SCHEDULES),
        "strategy.warmup": number(0, 1, example=0.1, hi_open=True),  # fraction of each phase
        "strategy.layer_decay": number(0, 1, example=0.8, lo_open=True),
        "strategy.bn": choice(*BN_MODES),
        "strategy.head_init": choice(*HEAD_INITS),
        "strategy.probe_views": integer(0, example=4),
        "strategy.phases": Rule(
            lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(p, dict) for p in v),
            "a non-empty list of phases {name, epochs, train, lr}",
            [{"name": "head", "epochs": 10, "train": ["head"], "lr": 1e-3}],
            ("abc", [], 3),
        ),
        "strategy.budget": number(0, 1, example=0.1),
        "strategy.pilot_cap": number(0, 1, example=0.5, lo_open=True),
        "models": names(["efficientnet_lite0", "resnet50"], config_names("model")) | NULL,  # advise
        "strategy.candidates": names(["feature_extraction", "lp_ft"], config_names("strategy", but="auto")),
        "strategy.feature_extraction_below": integer(1, example=500),
        "strategy.finetune_above": integer(1, example=2000),
        # ---- dataset/*.yaml (data/sources.py, data/splits.py)
        "dataset.name": text("imagefolder"),
        "dataset.source": choice("fashion_mnist", "imagefolder", "csv", "synthetic"),
        "dataset.root": text("/data/photos") | NULL,
        "dataset.manifest": text("/data/labels.csv") | NULL,
        "dataset.split_seed": integer(0, 2**32 - 1, example=0),
        "dataset.per_class": integer(1, example=100) | NULL,
        "dataset.train_size": integer(1, example=1000) | NULL,
        "dataset.val_per_class": integer(1, example=50) | NULL,
        "dataset.test_per_class": integer(1, example=300) | NULL,
        "dataset.val_fraction": FRACTION,
        "dataset.test_fraction": FRACTION,
        "dataset.num_classes": integer(2, 1000, example=4),
        "dataset.images_per_class": integer(3, example=40),  # one each for train, val and test at least
        "dataset.native_size": integer(8, 4096, example=32),
        **{f"dataset.preprocess.{k}": r for k, r in PREPROCESS.items()},
        # ---- trainer/*.yaml (lightning.Trainer arguments)
        "trainer.accelerator": choice("cpu", "gpu", "cuda", "mps", "auto"),  # gpu/cuda/mps need one: _cross_checks
        "trainer.devices": DEVICES,
        "trainer.precision": _Lazy(_lightning_precisions, "32-true"),
        "trainer.strategy": _Lazy(_lightning_strategies, "ddp"),
        "trainer.num_nodes": integer(1, example=2),
        "trainer.deterministic": boolean() | choice("warn"),
        "trainer.benchmark": boolean() | NULL,
        "trainer.sync_batchnorm": boolean(),
        "trainer.log_every_n_steps": integer(1, example=10),
        "trainer.enable_model_summary": boolean(),
        "trainer.enable_progress_bar": boolean(),
        "trainer.num_sanity_val_steps": integer(-1, example=0),
        "trainer.limit_train_batches": BATCHES,
        "trainer.limit_val_batches": BATCHES,
        "trainer.limit_test_batches": BATCHES,
        # ---- inspect.yaml, compare.yaml
        "samples_per_class": integer(1, 64, example=8),
        "strategies": names(["feature_extraction", "gradual"], config_names("strategy")),
        "seeds": names([0, 1, 2], item=integer(0, 2**32 - 1)),
        "sizes": names([10, 30, 100], item=integer(1)) | NULL,
        "size_unit": choice("per_class", "total"),
        "report_only": boolean(False),
        "dir": text("outputs/compare/mine"),
        # ---- audit.yaml (`out` is predict's key below); cleanlab's filter_by / scores (evaluation/suspects.py)
        "audit.filter_by": choice(
            "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
        ),  # fmt: skip
        "audit.rank_by": choice("self_confidence", "normalized_margin", "confidence_weighted_entropy"),
        "audit.show": integer(0, 200, example=24),
        # ---- plan.yaml (`out` is predict's key below; planning/curve.py, planning/pool.py)
        "pool": text("/data/unlabelled") | NULL,
        "target": number(0, 1, example=0.95, lo_open=True) | NULL,
        "plan.fractions": Rule(
            lambda v: (
                isinstance(v, list)
                and len(v) >= 3
                and all(_is_number(x) and 0 < x <= 1 for x in v)
                and all(a < b for a, b in zip(v, v[1:], strict=False))
                and v[-1] == 1
            ),
            "a list of 3 or more increasing fractions in (0, 1], the last 1 (the whole training set)",
            [0.125, 0.25, 0.5, 1.0],
            ("abc", [0.5, 1.0], [0.5, 0.25, 1.0], [0.25, 0.5, 0.75], [0, 0.5, 1]),
        ),
        "plan.seeds": integer(1, 100, example=5),
        "plan.at": Rule(
            lambda v: isinstance(v, list) and len(v) > 0 and all(_is_number(x) and x > 1 for x in v),
            "a non-empty list of multiples of the current training images, each > 1",
            [2, 4, 10],
            ("abc", [], [1], [0.5], 3),
        ),
        "plan.level": number(0.5, 0.99, example=0.9),
        "plan.bootstrap": integer(50, 100000, example=500),
        "plan.budget_minutes": number(0, example=30),
        "plan.strategy": choice(*config_names("strategy", but="auto")) | NULL,
        "plan.train_seeds": integer(1, 20, example=3),
        "plan.batch": integer(1, example=100),
        "plan.uncertainty": choice("margin", "entropy"),
        "plan.show": integer(0, 200, example=32),
        # ---- evaluate.yaml, predict.yaml, export.yaml
        "ckpt": text("outputs/.../checkpoints/best-epoch=12.ckpt"),
        "input": text("~/new_photos"),
        "split": choice("test", "val", "train"),
        "out": text("predictions") | NULL,
        "batch_size": integer(1, example=32),
        "num_workers": integer(0, example=2),
        "top_k": integer(1, example=5),
        "tta": boolean(False),
        "unknown": boolean(),  # predict: label inputs under the threshold `unknown`
        "explain": boolean(False),  # predict: Grad-CAM overlays
        "progress": boolean(),
        "format": choice("onnx", "torchscript"),
        "quantize": choice("int8") | NULL,  # export.quantize_int8 (format=onnx only: export.run says so)
        "calibration_images": integer(1, example=200),  # training images, never test
        "max_drop": number(0, 100, example=1.0),  # points of test accuracy an int8 export may lose
    }
    return rules


_TABLE: dict[str, Rule | _Lazy] | None = None


def rules() -> dict[str, Rule | _Lazy]:
    """The table, built once (it imports the modules that own the allowed values)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _rules()
    return _TABLE


def rule(key: str) -> Rule:
    found = rules()[key]
    return found.rule() if isinstance(found, _Lazy) else found


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def message(key: str, value, r: Rule) -> str:
    """`data.batch_size=0: must be an integer >= 1 (e.g. data.batch_size=32)`."""
    return f"{key}={_show(value)}: must be {r.allowed} (e.g. {key}={_show(r.example)})"


def _lookup(cfg: DictConfig, key: str):
    """The key's resolved value as plain Python; _ABSENT when this config has no such key (or it is ???)."""
    if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT:
        return _ABSENT
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or OmegaConf.is_missing(node, leaf):
        return _ABSENT
    raw = node._get_node(leaf)._value()
    if isinstance(raw, str) and raw.startswith("${hydra:"):
        return _ABSENT  # set by Hydra at run time (output_dir); not a user value
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def problems(cfg: DictConfig, cuda_available: bool | None = None) -> list[str]:
    """Every problem of `cfg`, one line each: table rules first, then the checks that span keys."""
    found = []
    for key in rules():
        try:
            value = _lookup(cfg, key)
        except Exception as err:  # noqa: BLE001 - a user's interpolation can fail in any resolver
            found.append(f"{key}: cannot be resolved ({type(err).__name__}: {err})")
            continue
        if value is _ABSENT:
            continue
        r = rule(key)
        if not r.ok(value):
            found.append(message(key, value, r))
    bad_keys = {line.split("=", 1)[0].split(":", 1)[0] for line in found}
    return found + _cross_checks(cfg, bad_keys, cuda_available)


def _cross_checks(cfg: DictConfig, bad_keys: set[str], cuda_available: bool | None) -> list[str]:
    found = []
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if "trainer.accelerator" not in bad_keys and accelerator in ("gpu", "cuda", "mps"):
        found += _accelerator_available(str(accelerator), cuda_available)
    strategy = OmegaConf.select(cfg, "strategy", default=None)
    phase_keys = {"strategy.phases", "strategy.bn", "strategy.schedule", "strategy.warmup", "strategy.layer_decay"}
    if isinstance(strategy, DictConfig) and not (bad_keys & phase_keys):
        found += _strategy_problems(OmegaConf.to_container(strategy, resolve=True), bad_keys)
    return found


def _accelerator_available(accelerator: str, cuda_available: bool | None) -> list[str]:
    import torch

    if accelerator == "mps":
        if torch.backends.mps.is_available():
            return []
        return ["trainer.accelerator=mps: no Apple GPU (MPS) here. Use trainer.accelerator=cpu (or trainer=cpu)."]
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cuda:
        return []
    return [
        f"trainer.accelerator={accelerator}: no CUDA GPU is visible here (torch.cuda.is_available() is False). "
        "Use trainer=cpu (or trainer.accelerator=cpu), or run on a machine with a GPU and its driver."
    ]


def _strategy_problems(strategy: dict, bad_keys: set[str]) -> list[str]:
    """The phase list (phases.check_strategy, and the selector names), or auto's thresholds."""
    from tlexp.model.phases import SELECTOR, check_strategy

    if strategy.get("name") == "auto":
        below, above = strategy.get("feature_extraction_below"), strategy.get("finetune_above")
        if bad_keys & {"strategy.feature_extraction_below", "strategy.finetune_above"} or below is None:
            return []
        if above is not None and below > above:
            return [
                f"strategy.feature_extraction_below={below} > strategy.finetune_above={above}: the first must be "
                f"<= the second (e.g. strategy.feature_extraction_below=500 strategy.finetune_above=2000)"
            ]
        return []
    try:
        check_strategy(strategy)
    except ConfigError as err:
        return [f"strategy.phases: {err}"]
    found = []
    for i, phase in enumerate(strategy.get("phases") or []):
        lr = phase.get("lr")
        selectors = [*phase.get("train", []), *(lr if isinstance(lr, dict) else [])]
        for s in selectors:
            if not SELECTOR.fullmatch(str(s)):
                found.append(
                    f"strategy.phases.{i}: selector '{s}' names no parameter group: use all, backbone, head, stem, "
                    "stageK, last or last:N (e.g. train: [head, last])"
                )
        decay = phase.get("weight_decay")
        if decay is not None and not (_is_number(decay) and decay >= 0):
            found.append(f"strategy.phases.{i}.weight_decay={_show(decay)}: must be a number >= 0 (e.g. 1.0e-4)")
    return found


def validate_config(cfg: DictConfig, cuda_available: bool | None = None) -> None:
    """Raise one ConfigError listing every bad value of `cfg`; return quietly when there is none."""
    found = problems(cfg, cuda_available)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} config values are not valid:\n  " + "\n  ".join(found))


def user_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every leaf key of a config, dotted; lists are leaves (a phase list, a colour) and so is an empty dict."""
    keys = []
    for k in cfg.keys():
        node = cfg._get_node(k)
        key = f"{prefix}{k}"
        if isinstance(node, DictConfig) and not node._is_none() and len(node) > 0:
            keys += user_keys(node, f"{key}.")
        else:
            keys.append(key)
    return keys


def check_writable(path: str | os.PathLike, how_to_fix: str, min_free_mb: float = 16) -> None:
    """Stop now, before any work, when `path` (a directory, made later if need be) cannot take the output.

    The nearest existing folder gets a temporary file written, flushed and removed (permissions, read-only
    mounts, quotas all show there), and must have `min_free_mb` free.
    """
    folder = Path(path).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output location {folder}: {existing} is a file, not a folder. {how_to_fix}")
    err = _write_probe(existing)
    if err is not None:
        raise ConfigError(f"cannot write to {existing} ({err.strerror or err}). {how_to_fix}") from err
    free_mb = shutil.disk_usage(existing).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(
            f"{existing} is full: {free_mb:.1f} MB free, {min_free_mb:g} MB at least needed. "
            f"Free some space, or {how_to_fix[0].lower()}{how_to_fix[1:]}"
        )


def _write_probe(folder: Path) -> OSError | None:
    """Write, flush and remove a small file in `folder`; the error that stopped the write, or None."""
    probe = folder / f".tlexp-write-test-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err
    finally:
        # Best effort: a read-only mount refuses even to unlink a file that is not there, and that error
        # would hide the one that says why the folder cannot be written.
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None
