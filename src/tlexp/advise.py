"""`python -m tlexp.advise dataset=...`: which backbone and strategy, measured on your own train/val split.

1. With `models=[...]`, every backbone whose weights can be had is ranked by its frozen features: a
   cross-validated linear probe and kNN over train + val, and forward speed (seconds; the features are cached).
2. For the best of them (or `model=`), `strategy=auto`'s own choice: the probe, then pilots of the candidates
   (pilots.py), in a temporary folder; with `strategy.budget=0`, the playbook's size rule, nothing trained.
It prints the evidence and a train command that keeps your overrides. Test is never read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shlex
import tempfile
import time
from dataclasses import dataclass

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tlexp.auto.pilots import cv_folds, select
from tlexp.config.cli import precheck
from tlexp.config.errors import ConfigError, WeightsUnavailable, exit_on_user_error
from tlexp.config.validate import config_names, validate_config
from tlexp.data.images import ImageFiles
from tlexp.data.preflight import probe
from tlexp.data.sources import load_source
from tlexp.evaluation import intervals
from tlexp.features.cache import eval_feature_cache, extract
from tlexp.features.evidence import FeatureEvidence, feature_evidence
from tlexp.model.backbones import create_backbone
from tlexp.run.build import build_datamodule, load_backbone, plain, preprocessing, replaced

from . import auto
from .data import TransferDataModule
from .data.sizes import shorter_sides, small_images

log = logging.getLogger(__name__)
SPEED_IMAGES = 256  # val images timed through the backbone for its forward speed


@dataclass
class Ranked:
    model: str
    evidence: FeatureEvidence | None
    images_per_second: float | None
    skipped: str | None = None  # why its weights could not be had


def advise(cfg: DictConfig) -> auto.Decision:
    validate_config(cfg)
    strategy = plain(cfg.strategy)
    if not auto.is_auto(strategy):  # the candidates and budget come from conf/strategy/auto.yaml unless given
        cfg = replaced(cfg, strategy=OmegaConf.load(auto.CONF / "strategy" / "auto.yaml"))
    model = None  # model=<best> in the printed command, when the ranking picked another than the user's
    ranking = rank_backbones(cfg, list(cfg.models)) if cfg.get("models") else []
    if ranking:
        print_ranking(ranking)
        if ranking[0].evidence is None:
            raise ConfigError("none of models=[...] has weights here; see the reasons above.")
        if ranking[0].model != cfg.model.get("short"):
            model = f"model={ranking[0].model}"
            cfg = with_model(cfg, ranking[0].model)
    decision = choose(cfg)
    note = image_size_note(cfg)
    if note:
        print(f"\nnote: {note}")
    print(f"\nadvice: {decision.reason}")
    print(f"run it: {train_command(decision.strategy, model)}")
    if decision.method == "evidence":
        print("   (or strategy=auto instead of strategy=...: it measures the same and keeps the winner's pilot)")
    print(flush=True)
    return decision


def choose(cfg: DictConfig) -> auto.Decision:
    """auto's decision: pilots in a temporary folder (deleted), or the size rule from the split sizes alone."""
    strategy = plain(cfg.strategy)
    if not auto.uses_pilots(strategy):
        # Only the split sizes are needed: no images are decoded, so the transform settings do not matter.
        data = TransferDataModule(plain(cfg.dataset), 32, (0.5,) * 3, (0.5,) * 3)
        sizes = data.sizes()
        print(f"\ndataset {cfg.dataset.name}: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}")
        return auto.resolve(strategy, sizes["train"], data.num_classes)[1]
    with tempfile.TemporaryDirectory(prefix="tlexp-advise-") as tmp:
        report = {**plain(cfg.report), "train_batch_preview": 0}
        decision = select(replaced(cfg, output_dir=tmp, report=report)).decision
    print_evidence(cfg, decision)
    return decision


def image_size_note(cfg: DictConfig, sample: int = 200) -> str | None:
    """inspect's note on images far smaller than the model's input, from the sizes of up to `sample` files."""
    if cfg.dataset.source not in ("imagefolder", "csv"):
        return None  # in-memory data sets (Fashion-MNIST, synthetic) come with their own input size
    source = load_source(plain(cfg.dataset), strict=False)
    paths = [p for images in source.splits.values() if isinstance(images, ImageFiles) for p in images.paths]
    size_hint = (cfg.dataset.get("preprocess") or {}).get("image_size")
    backbone, _ = create_backbone(cfg.model.name, None, size_hint)  # preprocessing only: no weights needed
    spread = paths[:: max(1, math.ceil(len(paths) / sample))]  # every class, not the first folder's files
    return small_images(shorter_sides([probe(p) for p in spread]), preprocessing(cfg, backbone).image_size)


def rank_backbones(cfg: DictConfig, models: list[str]) -> list[Ranked]:
    """Each backbone's frozen-feature evidence on this data, best CV probe first; unavailable ones last."""
    ranked = []
    for name in models:
        model_cfg = with_model(cfg, name)
        try:
            backbone, _ = load_backbone(model_cfg)
        except WeightsUnavailable as err:  # said, and the others still ranked
            ranked.append(Ranked(name, None, None, skipped=str(err).split(". ")[0]))
            continue
        pre = preprocessing(model_cfg, backbone)
        dm = build_datamodule(model_cfg, pre)
        dm.setup()
        features = eval_feature_cache(plain(model_cfg.cache), dm, backbone, model_cfg.model.name)
        train, val = features.features("train"), features.features("val")
        found = feature_evidence(train, val, dm.num_classes, folds=cv_folds(model_cfg))
        ranked.append(Ranked(name, found, forward_speed(backbone, dm)))
    return sorted(ranked, key=lambda r: -1.0 if r.evidence is None else r.evidence.cv_acc, reverse=True)


def forward_speed(backbone: torch.nn.Module, dm) -> float:
    """Images per second through the backbone (decode, transform, eval forward) on up to SPEED_IMAGES val images."""
    val = dm.splits["val"]
    subset = val.subset(list(range(min(SPEED_IMAGES, len(val))))) if hasattr(val, "subset") else val
    started = time.perf_counter()
    feats, _ = extract(backbone, subset, dm.eval_transform, dm.batch_size, dm.num_workers, seed=0)
    return len(feats) / (time.perf_counter() - started)


def over_folds(accs) -> str:
    """`0.93 [0.90, 0.96]`: the mean accuracy over folds with its t-interval, clipped to what accuracy can be."""
    found = intervals.mean(accs, unit="folds")
    if found.low is not None and found.high is not None:
        found = dataclasses.replace(found, low=max(0.0, found.low), high=min(1.0, found.high))
    return found.text(on=False)


def print_ranking(ranking: list[Ranked]) -> None:
    folds = next((r.evidence.folds for r in ranking if r.evidence is not None), 0)
    print(f"\nbackbones, by their frozen features ({folds}-fold CV over train + val; mean [95% interval] over folds):")
    print(f"  {'model':<22} {'probe acc':>20} {'kNN acc':>20} {'forward img/s':>14} {'probe acc/ms':>13}")
    for r in ranking:
        if r.evidence is None:
            print(f"  {r.model:<22} skipped: {r.skipped}")
            continue
        e = r.evidence
        per_ms = e.cv_acc * r.images_per_second / 1000  # accuracy per millisecond of forward time per image
        print(f"  {r.model:<22} {over_folds(e.cv_accs):>20} {over_folds(e.knn_accs):>20} "
              f"{r.images_per_second:>14.0f} {per_ms:>13.3f}")  # fmt: skip


def print_evidence(cfg: DictConfig, decision: auto.Decision) -> None:
    f = decision.features
    print(f"\ndataset {cfg.dataset.name}, model {cfg.model.short}: {decision.train_images} training images, "
          f"{decision.num_classes} classes")  # fmt: skip
    print(
        f"frozen features: probe val {intervals.wilson(f['val_right'], f['val_images']).text()}; "
        f"CV probe {over_folds(f['cv_accs'])} on {f['folds']} folds of train + val, "
        f"kNN (k={f['k']}) {over_folds(f['knn_accs'])} ({f['seconds']:.1f} s)"
    )
    if decision.stopped:
        print(f"stopped: {decision.stopped}")
    if not any(s["epochs"] for rung in decision.rungs for s in rung):
        print("pilots: none trained")
        print(f"choosing took {decision.seconds:.0f} s")
        return
    print("pilots, rung by rung (val accuracy [95% interval]; backbone epochs; estimated full run, as auto prices it):")
    for i, rung in enumerate(decision.rungs, 1):
        row = ", ".join(
            f"{s['strategy']} {intervals.Interval(**s['val']).text(on=False)} ({s['epochs']} ep, "
            f"{s['seconds']:.0f} s; full run ~{s['full_seconds_est']:.0f} s)"
            for s in rung
        )
        print(f"  rung {i}: {row}")
    print(f"choosing took {decision.seconds:.0f} s")


def with_model(cfg: DictConfig, name: str) -> DictConfig:
    """`cfg` with the model config `name` (the user's own `model.*` overrides kept when it is their `model=`)."""
    if cfg.model.get("short") == name:
        return cfg
    path = auto.CONF / "model" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(config_names("model"))
        raise ConfigError(f"models=[...]: '{name}' is not a model config; choose from {known}.")
    return replaced(cfg, model=OmegaConf.load(path))


def train_command(strategy: str, model: str | None = None) -> str:
    """The train command for this advice, keeping the user's own overrides (dataset, model, ...)."""
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    # cv.folds: the folds of advise's evidence; in train it would cross-validate (K models), not train the one to use
    dropped = ("strategy", "models", "cv", *(("model",) if model else ()))
    kept = [o for o in given if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in dropped]
    return shlex.join(["python", "-m", "tlexp.train", f"strategy={strategy}", *([model] if model else []), *kept])


@hydra.main(version_base="1.3", config_path="pkg://tlexp.conf", config_name="advise")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(advise)(cfg)


if __name__ == "__main__":
    precheck("advise")
    main()
