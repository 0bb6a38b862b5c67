"""'unknown': a confidence score and a threshold, chosen on val, under which an input is labelled `unknown`.

Three scores, each higher for images like the training data:
- `knn` (the default): the cosine similarity of the image's backbone features (what the head sees) to its K-th
  nearest training image (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"); the
  training features travel in the checkpoint (a seeded sample of at most BANK images, float16);
- `energy`: the negative energy T * logsumexp(logits / T) (Liu et al. 2020);
- `msp`: the maximum softmax probability at temperature T (Hendrycks & Gimpel 2017);
with T the temperature fitted on val (1 where calibration skips it). All are measured on val; `report.unknown_score`
picks the one that decides. Why knn: on the unknown bench (benchmarks/bench_unknown.py: models trained on
Fashion-MNIST, digits, textures, each shown the others' test images) it separates the foreign images with AUROC
>= 0.97 on every pair, where energy and msp fall to 0.02-0.8 on some: a linear head gives confident logits to
features far from anything it was trained on, a distance to the training features does not.
An exported ONNX / TorchScript graph gives logits only: there the energy score's own threshold decides.

The threshold is the val score under which `report.unknown_reject` (5%) of the val images fall: the share of
in-distribution images the model will call unknown. It reads val only (the training features are the reference
the distance is measured to, like the weights); the test set stays untouched, as for every other choice tlexp makes.

The record goes into metrics.json (`unknown`) and, with the training features, into the best checkpoint
(`tlexp_unknown`), where `tlexp.load` and `python -m tlexp.predict` read it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import calibration

SCORES = ("knn", "energy", "msp")
LOGIT_SCORES = ("energy", "msp")  # what an exported graph (logits only) can compute
K = 10  # the neighbour whose similarity is the score (Sun et al. 2022 use k = 50 on ImageNet's 1.2M images)
BANK = 4096  # training images kept as the reference, at most (a seeded sample): 10 MB for 1,280 features in fp16
LABEL = "unknown"  # what predict writes for an input under the threshold
CHECKPOINT_KEY = "tlexp_unknown"  # top-level key of the best checkpoint (Lightning ignores keys it does not know)


def score(logits: torch.Tensor, temperature: float = 1.0, kind: str = "energy") -> torch.Tensor:
    """Per row of `logits`: the logit score `kind` at `temperature` (higher = more like the training data)."""
    z = logits.float() / temperature
    if kind == "msp":
        return z.softmax(dim=1).max(dim=1).values
    if kind == "energy":
        return temperature * torch.logsumexp(z, dim=1)
    raise ValueError(f"unknown logit score '{kind}': one of {', '.join(LOGIT_SCORES)}")


def knn_score(features: torch.Tensor, bank: torch.Tensor, k: int = K) -> torch.Tensor:
    """Per row of `features`: the cosine similarity to its k-th most similar row of `bank` (the training features)."""
    sims = F.normalize(features.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    return sims.topk(min(k, bank.shape[0]), dim=1).values[:, -1]


def threshold_at(scores: torch.Tensor, reject: float) -> float:
    """The score under which the share `reject` of `scores` falls: the k-th smallest, k = floor(reject x n), so that
    exactly k of them lie below it (fewer where scores tie). reject = 0 gives the smallest: none below."""
    ordered = scores.flatten().sort().values
    k = min(len(ordered) - 1, math.floor(reject * len(ordered) + 1e-9))
    return float(ordered[k])


def fit(
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    reject: float = 0.05,
    kind: str = "knn",
    val_features: torch.Tensor | None = None,
    bank: torch.Tensor | None = None,
) -> dict:
    """The unknown record from the val split (logits, labels and, for knn, features) and the training features
    `bank`: temperature (calibration.calibrate; T = 1 where it is skipped), every score's threshold at the share
    `reject` of val, and the chosen score's as the record's own."""
    if len(val_labels) == 0:
        raise ValueError("no val images: the unknown threshold is chosen on val")
    if kind not in SCORES:
        raise ValueError(f"unknown score '{kind}': one of {', '.join(SCORES)}")
    if kind == "knn" and (val_features is None or bank is None):
        raise ValueError("the knn score needs the val features and the training features (bank)")
    fitted = calibration.calibrate(val_logits, val_labels)
    t = float(fitted.get("temperature", 1.0))
    val_scores = {name: score(val_logits, t, name) for name in LOGIT_SCORES}
    if val_features is not None and bank is not None:
        val_scores["knn"] = knn_score(val_features, bank)
    measured = {}
    for name, s in val_scores.items():
        cut = threshold_at(s, reject)
        measured[name] = {"threshold": cut, "reject_rate": float((s < cut).float().mean())}
    return {
        "score": kind,
        "temperature": t,
        **({"temperature_skipped": fitted["temperature_skipped"]} if "temperature_skipped" in fitted else {}),
        "threshold": measured[kind]["threshold"],
        "reject_rate": measured[kind]["reject_rate"],  # the share of val images under the threshold
        "reject_requested": float(reject),
        "val_images": int(len(val_labels)),
        **({"k": K, "bank_images": int(len(bank))} if "knn" in measured else {}),
        "by_score": measured,
    }


def for_logits(record: dict) -> dict:
    """The record as a model that gives logits only (an export) uses it: a knn record falls back to energy's
    threshold on the same val images."""
    if record.get("score") in LOGIT_SCORES:
        return record
    energy = record["by_score"]["energy"]
    kept = {k: v for k, v in record.items() if k not in ("bank", "k", "bank_images")}
    return {**kept, "score": "energy", "threshold": energy["threshold"], "reject_rate": energy["reject_rate"]}


def verdict(logits: torch.Tensor, record: dict, features: torch.Tensor | None = None):
    """(scores, is_unknown) of each image under a record (`fit`'s, with its `bank` for knn)."""
    if record["score"] == "knn":
        if features is None or record.get("bank") is None:
            raise ValueError("the knn score needs the images' features and the record's bank")
        scores = knn_score(features, record["bank"], record.get("k", K))
    else:
        scores = score(logits, record["temperature"], record["score"])
    return scores, scores < record["threshold"]


def describe(record: dict) -> str:
    """One line for the run summary."""
    how = f"k {record['k']}, {record['bank_images']} train images" if record["score"] == "knn" else ""
    how = how or f"T {record['temperature']:.3g}"
    return (
        f"{record['score']} score < {record['threshold']:.4g} ({how}): rejects {record['reject_rate']:.1%} of "
        f"{record['val_images']} val images (asked {record['reject_requested']:.0%})"
    )


# ---------------------------------------------------------------- from a model


@torch.no_grad()
def collect(module, loader, device=None, limit: float | int = 1.0, prepare=None):
    """(features, logits, labels) of a loader in loader order, the module in eval mode on `device`: the features the
    head sees (a batch of cached features is its own), and the head's logits of them. `prepare`: what the data
    module does to a batch on the device (data.augment_on=device: uint8 crops -> normalised floats)."""
    batches = limit if isinstance(limit, int) else math.ceil(float(limit) * len(loader))
    was_training = module.training
    module.eval().to(device or module.device)
    feats, logits, labels = [], [], []
    for x, y in itertools.islice(loader, batches):
        x = x.to(module.device)
        if prepare is not None and x.ndim == 4:
            x = prepare(x)
        f = x if x.ndim == 2 else module.backbone(x)
        feats.append(f.float().cpu())
        logits.append(module.head(f).float().cpu())
        labels.append(y)
    module.train(was_training)
    return torch.cat(feats), torch.cat(logits), torch.cat(labels)


def bank_sample(n: int, seed: int, size: int = BANK) -> np.ndarray:
    """Which of n training images make the reference: all when n <= size, else a seeded sample, in order."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def training_bank(module, datamodule, cache=None, seed: int = 0, limit: float | int = 1.0) -> torch.Tensor:
    """The reference features: the backbone's (eval transform) of a seeded sample of at most BANK training images,
    from the run's feature cache when every phase trained on it (the backbone is the cached one), else computed.
    `limit` reads like Lightning's limit_train_batches: a smoke run of a few batches keeps as few images."""
    from tlexp.features.cache import extract  # here: a model loaded for predict needs none of the cache

    train = datamodule.splits["train"]
    n = len(train)
    size = limit * datamodule.batch_size if isinstance(limit, int) else math.ceil(float(limit) * n)
    keep = bank_sample(n, seed, max(1, min(BANK, size)))
    if cache is not None and cache.all_cached:
        return cache.features("train")[0][torch.as_tensor(keep)]
    transform = module.eval_preprocessing().eval_transform()
    images = train.subset(keep)
    return extract(module.backbone, images, transform, datamodule.batch_size, datamodule.num_workers, seed)[0]


# ---------------------------------------------------------------- measuring it


def auroc(known: np.ndarray | torch.Tensor, unknown: np.ndarray | torch.Tensor) -> float:
    """The probability that a known (in-distribution) image scores above an unknown one, ties counted half
    (the area under the ROC curve of `known` as positives; Mann-Whitney U over n_known x n_unknown)."""
    from scipy.stats import rankdata  # here: predict needs none of scipy

    known, unknown = np.asarray(known, dtype=float).ravel(), np.asarray(unknown, dtype=float).ravel()
    ranks = rankdata(np.concatenate([known, unknown]))
    n, m = len(known), len(unknown)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def accepted(unknown_scores: np.ndarray | torch.Tensor, threshold: float) -> float:
    """The share of unknown images at or above the threshold: the ones predict would label as a class."""
    return float((np.asarray(unknown_scores, dtype=float) >= threshold).mean())


def separation(known: tuple, foreign: tuple, record: dict) -> dict:
    """How well each score tells a model's own test images from images of something else: `known` and `foreign`
    are (features, logits) of each; per score, AUROC and the share of the foreign images accepted at that score's
    val threshold (and of the known ones rejected). knn needs the record's bank (the checkpoint's record)."""
    found = {}
    for kind in record["by_score"]:
        single = {**record, "score": kind, "threshold": record["by_score"][kind]["threshold"]}
        (k_scores, k_out), (f_scores, _) = (verdict(lg, single, ft) for ft, lg in (known, foreign))
        found[kind] = {
            "auroc": auroc(k_scores, f_scores),
            "accepted": accepted(f_scores, single["threshold"]),  # unknowns that would get a class
            "known_rejected": float(k_out.float().mean()),  # on test: near reject_requested when test is like val
        }
    return found


# ---------------------------------------------------------------- where it is kept


def write_into_checkpoint(path: str | Path, record: dict, bank: torch.Tensor | None = None) -> None:
    """Add the record (and the training features, float16) to a Lightning checkpoint, rewriting it atomically."""
    from tlexp.run.atomic import atomic_path  # here: it imports Lightning, which loading a model does not need

    state = torch.load(path, map_location="cpu", weights_only=False)
    state[CHECKPOINT_KEY] = {**record, **({"bank": bank.half().contiguous()} if bank is not None else {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def from_checkpoint(path: str | Path) -> dict | None:
    """The record a checkpoint holds (with `bank` as float32), or None (older checkpoints, runs with no val)."""
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    record = state.get(CHECKPOINT_KEY) if isinstance(state, dict) else None
    if record and record.get("bank") is not None:
        record = {**record, "bank": record["bank"].float()}
    return record


def without_bank(record: dict | None) -> dict | None:
    """The record as metrics.json holds it (the features stay in the checkpoint)."""
    return None if record is None else {k: v for k, v in record.items() if k != "bank"}
