"""Which unlabelled images to label next: what a label would teach the current probe, spread over the data.

The pool (a folder of unlabelled images, read recursively) goes through the same checks as a dataset's files
(`data/preflight.py`: unreadable files are skipped and listed, as `data.on_bad_image=skip` does; exact copies of an
image already labelled, or of another pool image, are left out) and the same frozen feature extractor as the
training images. The ranking balances two things. Diversity by clustering: the pool's L2-normalised features (their
first 64 principal components) are split by k-means into `batch` clusters, and the first `batch` images of the list
are one from each, so the top of the list covers the pool instead of fifty copies of one hard case. What a label
would teach: in each cluster the pick is the image the current probe is least sure of (margin or entropy) among
the quarter of its images nearest the cluster's centre, a typical image of that cluster rather than an outlier
(at a few hundred labels, typical images teach more than outliers: Hacohen et al., ICML 2022). The clusters take
turns, the one whose images the probe is least sure of in all first; the second round takes each cluster's next
image, and so on, so every pool image is ranked.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tlexp.config.errors import DataError
from tlexp.data.preflight import preflight
from tlexp.data.sources import IMAGE_EXTENSIONS, iter_files

log = logging.getLogger(__name__)
UNCERTAINTIES = ("margin", "entropy")
SAME = 1e-6  # features closer than this (L2-normalised) are the same image
PCA_DIMS = 64  # the clustering's dimensions
TYPICAL_SHARE = 0.25  # a cluster's candidates: this share of its images, those nearest its centre


@dataclass
class PoolScan:
    """The pool's usable image files and what was passed over, with the reason."""

    root: Path
    paths: list[str]
    bad_files: list[dict] = field(default_factory=list)  # {"path", "reason"}: unreadable, skipped
    left_out: list[dict] = field(default_factory=list)  # {"path", "reason"}: already labelled, or a copy
    ignored: dict[str, int] = field(default_factory=dict)  # non-image files by extension
    warnings: list[str] = field(default_factory=list)
    sha1: dict[str, str] = field(default_factory=dict)


def scan_pool(folder, on_bad_image: str = "skip", labelled: dict[str, str] | None = None, cache_file=None) -> PoolScan:
    """Every image file under `folder` (linked folders followed, hidden files passed over), pre-flighted.

    `labelled`: sha1 -> path of the images already labelled (train and val): a pool file with the same bytes, or the
    same file, is left out. Unreadable files are skipped and listed (`on_bad_image=error`: one DataError)."""
    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise DataError(f"pool={folder}: no such folder. Point pool= at a folder of unlabelled images (any depth).")
    warnings: list[str] = []
    ignored: dict[str, int] = {}
    candidates = []
    for p in iter_files(root, warnings):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            candidates.append(str(p))
        else:
            ignored[p.suffix.lower() or "(no extension)"] = ignored.get(p.suffix.lower() or "(no extension)", 0) + 1
    if not candidates:
        raise DataError(
            f"pool={folder}: no image files under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    probes = preflight(candidates, cache_file)
    bad = sorted((p, r.reason) for p, r in probes.items() if r.reason)
    scan = PoolScan(root, [], [{"path": p, "reason": why} for p, why in bad], [], ignored, warnings)
    if bad:
        listing = "\n".join(f"  {p}: {why}" for p, why in bad[:30])
        listing += f"\n  ... and {len(bad) - 30} more (all in plan.json)" if len(bad) > 30 else ""
        if on_bad_image == "error":
            raise DataError(
                f"{len(bad)} unreadable image file(s) in the pool (data.on_bad_image=error):\n{listing}\n"
                "Fix or delete them, or set data.on_bad_image=skip to rank the pool without them."
            )
        log.warning("pool: skipping %d unreadable image file(s):\n%s", len(bad), listing)
    labelled = labelled or {}
    labelled_paths = {os.path.realpath(p) for p in labelled.values()}
    seen: dict[str, str] = {}
    for p in candidates:
        found = probes[p]
        if found.reason:
            continue
        if os.path.realpath(p) in labelled_paths or found.sha1 in labelled:
            scan.left_out.append({"path": p, "reason": f"already labelled: {labelled.get(found.sha1, p)}"})
        elif found.sha1 in seen:
            scan.left_out.append({"path": p, "reason": f"an exact copy of {seen[found.sha1]}"})
        else:
            seen[found.sha1] = p
            scan.paths.append(p)
            scan.sha1[p] = found.sha1
    if not scan.paths:
        raise DataError(f"pool={folder}: no image left to rank (unreadable: {len(bad)}, already labelled or copies: "
                        f"{len(scan.left_out)}).")  # fmt: skip
    return scan


# ---------------------------------------------------------------- the ranking


def uncertainty(probs: torch.Tensor, kind: str = "margin") -> torch.Tensor:
    """0 (sure) .. 1 (torn): 1 - (top probability - second), or the entropy over log(classes)."""
    if kind not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {kind!r}")
    probs = probs.double()
    if kind == "margin":
        top = probs.topk(2, dim=1).values
        return 1 - (top[:, 0] - top[:, 1])
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    return entropy / np.log(probs.shape[1])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=1)


def _nearest(points: torch.Tensor, centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Distance from each unit vector in `points` to its nearest one in `centres` (inf when there are none)."""
    if len(centres) == 0:
        return torch.full((len(points),), float("inf"), dtype=torch.float64)
    out = torch.empty(len(points), dtype=torch.float64)
    for start in range(0, len(points), chunk):
        sims = points[start : start + chunk] @ centres.T
        out[start : start + chunk] = (2 - 2 * sims.max(1).values).clamp_min(0).sqrt()
    return out


@dataclass
class Ranking:
    """The pool in the order to label it: positions into the pool's arrays, with each one's figures."""

    order: np.ndarray  # pool positions, first to label first
    uncertainty: np.ndarray  # per rank: the probe's uncertainty (the score within a cluster)
    cluster: np.ndarray  # per rank: its cluster
    cluster_size: np.ndarray  # per rank: the images of its cluster
    round: np.ndarray  # per rank: 1 = its cluster's first pick, 2 = the second, ...
    batch: int  # the first `batch` ranks: one image from each cluster
    left_out: dict[int, str]  # pool position -> why it is not ranked (the same picture as one labelled or listed)


def same_features(features: torch.Tensor) -> np.ndarray:
    """For each row, the first row with the same features (itself when none is earlier): an exact copy."""
    rounded = np.round(features.double().numpy(), 6)
    _, first, inverse = np.unique(rounded, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def reduced(unit: torch.Tensor, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """The unit features' first `dims` principal components (k-means in 1,280 dimensions is slower, no better)."""
    centred = (unit - unit.mean(0)).float()
    q = min(dims, *centred.shape)
    with torch.random.fork_rng(devices=[]):  # pca_lowrank draws a random projection: seeded, the run's RNG untouched
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(centred, q=q, center=False)
    return (centred @ v).numpy()


def clusters(points: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn; mini-batch on large pools): each point's cluster and the centres."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(points) > 20000:
        found = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit(points)
    else:
        found = KMeans(k, random_state=seed, n_init=3).fit(points)
    return found.labels_, found.cluster_centers_


def rank_pool(probs, features, labelled_features, batch: int, kind: str = "margin", seed: int = 0) -> Ranking:
    """The pool clustered into `batch` groups (see the module's docstring); each group's pick is the most uncertain
    of its typical images; the groups take turns, the one whose images the probe is least sure of first. Every pool
    image is listed once, except those whose features equal a labelled image's or an earlier pool image's."""
    u = uncertainty(torch.as_tensor(probs), kind).numpy()
    pool, labelled = _unit(torch.as_tensor(features)), _unit(torch.as_tensor(labelled_features))
    left_out = {
        int(i): "the same features as a labelled image" for i in np.flatnonzero(_nearest(pool, labelled) < SAME)
    }
    first = same_features(pool)
    for i in np.flatnonzero(first != np.arange(len(pool))):
        left_out.setdefault(int(i), f"the same features as pool image {int(first[i])}")
    kept = np.setdiff1d(np.arange(len(pool)), np.fromiter(left_out, dtype=np.int64, count=len(left_out)))
    k = min(batch, len(kept))
    if k == len(kept):  # as many clusters as images: each image is its own (and nothing left: nothing ranked)
        points = np.zeros((len(kept), 1))
        which, centres = np.arange(len(kept)), points
    else:
        points = reduced(pool[kept], seed=seed)
        which, centres = clusters(points, k, seed) if k > 1 else (np.zeros(len(kept), dtype=np.int64), points[:1])
    queues, mass = [], []
    for c in range(k):
        members = np.flatnonzero(which == c)
        if not len(members):
            continue
        spread = np.linalg.norm(points[members] - centres[c], axis=1)
        typical = np.zeros(len(members), dtype=bool)
        typical[np.argsort(spread, kind="stable")[: max(1, math.ceil(TYPICAL_SHARE * len(members)))]] = True
        # the typical ones first (most uncertain first), then the others (most uncertain first)
        order = np.lexsort((-u[kept[members]], ~typical))
        queues.append(kept[members[order]])
        mass.append(float(u[kept[members]].sum()))
    turns = np.argsort(-np.asarray(mass), kind="stable")
    ranked, rounds, cluster, size = [], [], [], []
    depth = max((len(q) for q in queues), default=0)
    for r in range(depth):
        for c in turns:
            if r < len(queues[c]):
                ranked.append(queues[c][r])
                rounds.append(r + 1)
                cluster.append(int(c))
                size.append(len(queues[c]))
    order = np.asarray(ranked, dtype=np.int64)
    return Ranking(
        order=order,
        uncertainty=u[order],
        cluster=np.asarray(cluster, dtype=np.int64),
        cluster_size=np.asarray(size, dtype=np.int64),
        round=np.asarray(rounds, dtype=np.int64),
        batch=len(queues),
        left_out=left_out,
    )


def expected_counts(probs, predicted, order: np.ndarray, class_names: list[str]) -> list[dict]:
    """Per class, among the images listed first: how many the probe predicts as that class, and the expected
    number by its probabilities (the sum over those images)."""
    probs = torch.as_tensor(probs).double()[torch.as_tensor(order)]
    predicted = np.asarray(predicted)[order]
    return [
        {"class": name, "predicted": int((predicted == c).sum()), "expected": round(float(probs[:, c].sum()), 1)}
        for c, name in enumerate(class_names)
    ]
