"""The label audit: out-of-fold probabilities no model saw, stratified seeded folds, planted flips found, its files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlexp.config.validate import rule
from tlexp.data.sources import synthetic
from tlexp.evaluation.suspects import AUDIT_COLUMNS, find_suspects
from tlexp.features.out_of_fold import fold_plan, out_of_fold, predict_out_of_fold, probe_fit

ROOT = Path(__file__).resolve().parents[1]


def clusters(per_class: int = 50, classes: int = 4, dim: int = 16, spread: float = 1.0, seed: int = 0):
    """Gaussian blobs, one per class, 3 units apart: features a probe separates well but not perfectly."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=gen)
    y = torch.arange(classes).repeat_interleave(per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=gen), y


def flip(y: torch.Tensor, count: int, classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` labels changed to another class, spread over the classes; returns (noisy labels, flipped indices)."""
    gen = torch.Generator().manual_seed(seed)
    members = [(y == c).nonzero().flatten() for c in range(classes)]
    idx = torch.cat([m[torch.randperm(len(m), generator=gen)][: count // classes] for m in members])
    noisy = y.clone()
    noisy[idx] = (y[idx] + torch.randint(1, classes, (len(idx),), generator=gen)) % classes
    return noisy, idx


# ---------------------------------------------------------------- no image predicted by a model that saw it


def test_each_image_is_predicted_only_by_fits_that_left_it_out():
    x, y = clusters(per_class=12, classes=3)
    x[:, 0] = torch.arange(len(y), dtype=x.dtype)  # each row names its image
    plan = fold_plan(y, folds=4, repeats=2, seed=5)
    predicted_by = {i: [] for i in range(len(y))}  # image -> the images each fit that predicted it trained on

    def spy(train, held, num_classes, l2):
        trained = {int(v) for v in train[0][:, 0]}
        for i in held[0][:, 0]:
            predicted_by[int(i)].append(trained)
        return torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes)

    probs = predict_out_of_fold(x, y, plan, 3, l2=1e-3, fit=spy)
    assert torch.allclose(probs.sum(1), torch.ones(len(y), dtype=probs.dtype))
    for i, fits in predicted_by.items():
        assert len(fits) == 2, f"image {i}: predicted {len(fits)} times, once per repeat expected"
        assert all(i not in trained for trained in fits), f"image {i} was predicted by a fit that trained on it"
        assert all(len(trained) > 0.6 * len(y) for trained in fits)  # the other folds, not a sliver


def test_a_memorisable_feature_does_not_leak_into_out_of_fold_predictions():
    """Random labels and a one-hot feature per image: a probe that saw an image recalls its label; out of fold,
    nothing can, so the out-of-fold accuracy stays near chance (the probe's real fit, not a spy)."""
    n, classes = 120, 4
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.cat([torch.eye(n), 0.1 * torch.randn(n, 4, generator=gen)], dim=1)
    weight, bias = probe_fit((x, y), (x, y), classes, l2=1e-5)
    seen = ((x @ weight.T + bias).argmax(1) == y).double().mean().item()
    probs = predict_out_of_fold(x, y, fold_plan(y, 5, seed=0), classes, l2=1e-5)
    unseen = (probs.argmax(1) == y).double().mean().item()
    assert seen > 0.95, f"the planted feature should be memorised in sample (accuracy {seen:.2f})"
    assert unseen < 0.45, f"out-of-fold accuracy {unseen:.2f} on random labels: predictions saw their images"


# ---------------------------------------------------------------- the folds


def test_folds_are_stratified_disjoint_covering_and_seeded():
    y = torch.tensor([0] * 23 + [1] * 17 + [2] * 11)
    plan = fold_plan(y, folds=5, repeats=3, seed=7)
    assert plan.shape == (3, len(y))
    for fold in plan:  # every image in exactly one fold of each repeat: disjoint, covering
        assert set(fold.tolist()) == set(range(5))
        for c in range(3):  # stratified: each class split as evenly as it can be
            counts = torch.bincount(fold[y == c], minlength=5)
            assert counts.max() - counts.min() <= 1, (c, counts)
    assert torch.equal(plan, fold_plan(y, folds=5, repeats=3, seed=7))  # same seed, same folds
    assert not torch.equal(plan[0], plan[1])  # a repeat is a new shuffle
    assert not torch.equal(plan, fold_plan(y, folds=5, repeats=3, seed=8))


def test_out_of_fold_covers_train_then_val_and_lowers_folds_to_the_smallest_class():
    x, y = clusters(per_class=6, classes=3)
    train, val = (x[::2], y[::2]), (x[1::2], y[1::2])
    oof = out_of_fold(train, val, 3, folds=10, repeats=2, seed=0, l2=1e-2)
    assert torch.equal(oof.labels, torch.cat([train[1], val[1]]))
    assert oof.probs.shape == (len(y), 3) and oof.folds.shape == (2, len(y))
    assert int(oof.folds.max()) + 1 == 6 and oof.notes  # 6 images in the smallest class: 6 folds, and said


# ---------------------------------------------------------------- confident learning finds planted flips


def test_planted_flips_are_flagged_and_rank_first():
    x, y = clusters(per_class=50, classes=4, seed=3)
    noisy, flipped = flip(y, 8, 4)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # the blobs come ordered by class
    position = torch.empty_like(order)
    position[order] = torch.arange(len(y))
    train, val = (x[order[:160]], noisy[order[:160]]), (x[order[160:]], noisy[order[160:]])
    oof = out_of_fold(train, val, 4, folds=5, seed=0)
    found = find_suspects(oof.labels.numpy(), oof.probs.numpy())
    planted = set(position[flipped].tolist())
    ranking = np.argsort(found.scores, kind="stable")  # every image, lowest label quality first
    assert set(ranking[: len(planted)].tolist()) == planted, "the planted flips are not the top suspects"
    flagged = set(found.order.tolist())
    assert flagged <= planted, f"flagged images that were not flipped: {flagged - planted}"
    # confident learning is conservative: a flip whose true class it is not confident of (here p = 0.91 under
    # class 1's threshold) is ranked but not flagged
    assert len(flagged) >= 0.75 * len(planted), f"{len(flagged)} of {len(planted)} planted flips flagged"
    assert np.all(np.diff(found.scores[found.order]) >= 0)  # most suspect (lowest score) first
    truth = y[order].numpy()
    assert np.array_equal(found.suggested[sorted(planted)], truth[sorted(planted)])  # the true class suggested


def test_every_choice_the_config_offers_is_one_cleanlab_takes():
    x, y = clusters(per_class=20, classes=3)
    noisy, _ = flip(y, 6, 3)
    probs = out_of_fold((x[::2], noisy[::2]), (x[1::2], noisy[1::2]), 3, l2=1e-2).probs.numpy()
    labels = torch.cat([noisy[::2], noisy[1::2]]).numpy()
    cleanlab_filters = ["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"]
    cleanlab_scores = ["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
    filters = [f for f in cleanlab_filters if rule("audit.filter_by").ok(f)]
    scores = [s for s in cleanlab_scores if rule("audit.rank_by").ok(s)]
    assert filters and scores and not rule("audit.filter_by").ok("low_margin")
    for f in filters:
        for s in scores:
            found = find_suspects(labels, probs, f, s)
            assert len(found.order) > 0 and found.scores.shape == (len(labels),), (f, s)


# ---------------------------------------------------------------- the command, as a user types it


def image_folder(root: Path, flips: dict[tuple[str, int], int]) -> list[str]:
    """train/ val/ test/ class folders of the synthetic set's images; `flips` puts (split, index) in another
    class's folder. Returns the flipped files' paths."""
    source = synthetic(num_classes=3, per_class=40, image_size=32)
    pixels, labels = source.splits["pool"].pixels, source.splits["pool"].labels
    moved = []
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        split = "train" if i % 40 < 26 else "val" if i % 40 < 33 else "test"
        folder = flips.get((split, i), int(label))
        path = root / split / f"c{folder}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        if folder != label:
            moved.append(str(path))
    return moved


def test_the_audit_command_flags_the_moved_images_and_writes_its_files(tmp_path, tiny_weights):
    flips = {("train", 3): 1, ("train", 45): 2, ("train", 90): 0}
    moved = image_folder(tmp_path / "photos", flips)
    out = tmp_path / "audit"
    command = [
        sys.executable, "-m", "tlexp.audit", "dataset=imagefolder", f"dataset.root={tmp_path / 'photos'}",
        "model=test_resnet", f"model.weights={tiny_weights}", "dataset.preprocess.image_size=32",
        "data.num_workers=0", f"cache.dir={tmp_path / 'cache'}", f"out={out}", "audit.show=4",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "audit.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == AUDIT_COLUMNS
    assert set(moved) <= {r["path"] for r in rows[: len(moved) + 2]}, (moved, rows[:6])
    assert (out / "exclude.txt").read_text().splitlines() == [r["path"] for r in rows]
    with open(out / "out_of_fold.csv") as f:
        every = list(csv.DictReader(f))
    assert list(every[0])[:6] == ["path", "split", "label", "fold", "predicted", "score"]
    assert [k for k in every[0] if k.startswith("p_")] == ["p_c0", "p_c1", "p_c2"]
    assert len(every) == 3 * 33 and {r["split"] for r in every} == {"train", "val"}  # test never in a fold
    assert not any("/test/" in r["path"] for r in every)
    summary = json.loads((out / "audit.json").read_text())
    assert not any(name.startswith("test") for name in summary["features"]["computed"] + summary["features"]["loaded"])
    assert (out / "suspects.png").stat().st_size > 0
    assert f"data.exclude={out / 'exclude.txt'}" in done.stdout
    command_line = next(line for line in done.stdout.splitlines() if "python -m tlexp.train" in line)
    assert "dataset=imagefolder" in command_line and "audit.show" not in command_line and "out=" not in command_line
