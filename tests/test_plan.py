"""The labelling plan: nested stratified subsets, a fit that recovers a known curve, a ranking that spreads and never
repeats or returns a labelled image, a pool's bad files handled as the data module's, and no step that reads test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from tlexp.config.errors import DataError
from tlexp.data.preflight import probe
from tlexp.planning import curve as curves
from tlexp.planning.pool import rank_pool, scan_pool, uncertainty

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- nested, stratified subsets


def test_subsets_are_nested_stratified_and_end_with_every_image():
    labels = np.repeat([0, 1, 2], [40, 20, 8])
    fractions = [0.125, 0.25, 0.5, 1.0]
    chains = [curves.nested_subsets(labels, fractions, seed) for seed in (0, 1)]
    for chain in chains:
        for small, large in zip(chain, chain[1:], strict=False):
            assert set(small) < set(large), "a larger subset must hold every image of the smaller ones"
        for f, idx in zip(fractions, chain, strict=True):
            assert len(set(idx.tolist())) == len(idx)
            counts = np.bincount(labels[idx], minlength=3)
            expected = [max(1, int(np.floor(f * n + 0.5))) for n in (40, 20, 8)]
            assert counts.tolist() == expected, (f, counts, expected)  # every class in its share, at least one
        assert sorted(chain[-1].tolist()) == list(range(len(labels)))
    assert not np.array_equal(chains[0][0], chains[1][0]), "another seed draws other subsets"


# ---------------------------------------------------------------- the fit


def made_up(a: float, b: float, c: float, sizes, seeds: int = 5, val: int = 3000, seed: int = 0) -> curves.Measured:
    """Verdicts drawn from a known curve: each seed's accuracy varies a little, each val image is a coin flip."""
    rng = np.random.default_rng(seed)
    labels = np.arange(val) % 3
    correct = []
    for n in sizes:
        p = curves.saturating(n, a, b, c, sizes[-1])
        per_seed = np.clip(p + rng.normal(0, 0.01, seeds), 0, 1)
        correct.append(rng.random((seeds, val)) < per_seed[:, None])
    return curves.Measured(list(sizes), correct, labels)


def test_the_fit_recovers_a_made_up_curve_and_its_intervals_hold_the_truth():
    a, b, c, sizes = 0.9, 0.12, 0.6, [100, 200, 400, 800, 1600]
    fitted = curves.fit(made_up(a, b, c, sizes), replicates=300, level=0.9)
    assert abs(fitted.a - a) < 0.03 and abs(fitted.b - b) < 0.03 and abs(fitted.c - c) < 0.25, fitted
    for times in (2, 4, 10):
        value, low, high = fitted.forecast(times * 1600)
        truth = curves.saturating(times * 1600, a, b, c, 1600)
        assert low <= truth <= high and abs(value - truth) < 0.02, (times, value, low, high, truth)
    _, low, high = fitted.asymptote()
    assert low <= a <= high


def test_a_target_above_the_ceiling_is_not_reachable_and_one_below_gets_a_count():
    from tlexp.plan import target_plan

    fitted = curves.fit(made_up(0.8, 0.15, 0.7, [50, 100, 200, 400]), replicates=200, level=0.9)
    never = target_plan(fitted, OmegaConf.create({"target": 0.95}))
    assert never["verdict"] == "not reachable" and never["images"] is None
    reach = target_plan(fitted, OmegaConf.create({"target": 0.75}))
    truth = 400 * (0.15 / (0.8 - 0.75)) ** (1 / 0.7)  # a - b (n/400)^-c = 0.75
    assert reach["verdict"] == "reachable" and reach["low"] <= truth <= reach["high"]


# ---------------------------------------------------------------- the ranking


def blobs(per: int = 40, clusters: int = 5, dim: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(clusters, dim, generator=gen)
    which = torch.arange(clusters).repeat_interleave(per)
    return centres[which] + 0.3 * torch.randn(len(which), dim, generator=gen), which


def test_the_ranking_spreads_over_clusters_and_never_repeats_or_returns_a_labelled_image():
    feats, cluster = blobs()
    hard = cluster == 0  # one hard case in many near copies: the probe is torn on every one of them
    feats[hard] = feats[hard][0] + 0.02 * torch.randn(int(hard.sum()), feats.shape[1], generator=torch.Generator())
    probs = torch.tensor([[0.8, 0.15, 0.05]]).repeat(len(feats), 1)
    probs[hard] = torch.tensor([0.4, 0.35, 0.25])
    feats[7] = feats[3]  # a copy inside the pool
    labelled = torch.cat([feats[cluster == 1][:2], feats[50:51]])  # image 50 of the pool is labelled already
    ranking = rank_pool(probs, feats, labelled, batch=10)
    order = ranking.order.tolist()
    assert len(order) == len(set(order)), "an image listed twice"
    assert 50 not in order and 50 in ranking.left_out, "a labelled image is listed"
    assert not {3, 7} <= set(order), "two copies of one picture are both listed"
    assert len(order) == len(feats) - len(ranking.left_out)
    top = cluster[ranking.order[:10]]
    assert len(set(top.tolist())) >= 4, f"the first ten sit in clusters {top.tolist()}"
    assert 1 <= int((top == 0).sum()) <= 2, f"the hard case taken once or twice, not in every copy: {top.tolist()}"
    assert top[0] == 0, "the cluster the probe is least sure of comes first"
    by_uncertainty = torch.argsort(uncertainty(probs), descending=True)[:10]
    assert set(cluster[by_uncertainty].tolist()) == {0}, "(uncertainty alone would take one cluster only)"


# ---------------------------------------------------------------- the pool's files


def write_pool(folder: Path, good: int = 5) -> dict:
    rng = np.random.default_rng(0)
    (folder / "sub" / "deeper").mkdir(parents=True)
    paths = []
    for i in range(good):
        where = folder / ("sub/deeper" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(where)
        paths.append(where)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "sub" / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored")
    return {"good": paths, "bad": [folder / "broken.png", folder / "sub" / "empty.jpg"]}


def test_a_pool_with_unreadable_files_skips_and_lists_them_as_the_data_module_does(tmp_path):
    made = write_pool(tmp_path / "pool")
    labelled_copy = tmp_path / "pool" / "sub" / "copy.png"
    labelled_copy.write_bytes(made["good"][0].read_bytes())
    labelled = {probe(str(made["good"][0])).sha1: "train/cat/0.png"}  # the first image is labelled already...
    scan = scan_pool(tmp_path / "pool", "skip", labelled)
    bad = {b["path"]: b["reason"] for b in scan.bad_files}
    assert bad == {str(p): probe(str(p)).reason for p in made["bad"]}  # the data module's pre-flight reasons
    assert all(bad.values())
    assert sorted(scan.paths) == sorted(str(p) for p in made["good"][1:])  # ... and so is its copy: left out
    assert {x["path"] for x in scan.left_out} == {str(made["good"][0]), str(labelled_copy)}
    assert scan.ignored == {".txt": 1}
    with pytest.raises(DataError, match="2 unreadable image file"):
        scan_pool(tmp_path / "pool", "error", labelled)


# ---------------------------------------------------------------- no step reads test


def plan_cfg(tmp_path: Path, tiny_weights: Path, *overrides: str):
    with initialize_config_module(config_module="tlexp.conf", version_base="1.3"):
        return compose(config_name="plan", overrides=[
            "model=test_resnet", f"model.weights={tiny_weights}", "dataset=synthetic", "dataset.num_classes=6",
            "data.batch_size=16", "data.num_workers=0", "trainer.enable_progress_bar=false", "report.enabled=false",
            f"cache.dir={tmp_path / 'feature_cache'}", "plan.bootstrap=60", "plan.seeds=2", "data.preflight_cache=null",
            *overrides,
        ])  # fmt: skip


def test_no_step_of_the_plan_reads_test(tmp_path, tiny_weights, monkeypatch, capsys):
    from tlexp import plan as planner
    from tlexp.data import datamodule
    from tlexp.data.images import TensorImages
    from tlexp.features.cache import FeatureCache

    clean = planner.plan(plan_cfg(tmp_path, tiny_weights, f"out={tmp_path / 'clean'}"))

    class Garbage(TensorImages):
        def image(self, i):
            raise AssertionError("the plan decoded a test image")

    make_splits = datamodule.make_splits

    def poisoned(*args, **kwargs):
        splits = make_splits(*args, **kwargs)
        test = splits["test"]
        noise = torch.randint(0, 256, test.pixels.shape, dtype=torch.uint8)
        splits["test"] = Garbage(noise, np.random.default_rng(0).permutation(test.labels), "garbage")
        return splits

    features = FeatureCache.features

    def no_test(self, split, view=None):
        assert split != "test", "the plan asked for test features"
        return features(self, split, view)

    monkeypatch.setattr(datamodule, "make_splits", poisoned)
    monkeypatch.setattr(FeatureCache, "features", no_test)
    monkeypatch.setattr("lightning.Trainer.test", lambda *a, **k: pytest.fail("a strategy run was tested"))
    poisoned_plan = planner.plan(plan_cfg(tmp_path, tiny_weights, f"out={tmp_path / 'poisoned'}"))
    timeless = [{k: v for k, v in p["probe"].items() if k != "seconds"} for p in (clean, poisoned_plan)]
    assert timeless[0] == timeless[1], "the plan changed with the test split"
    # the strategy's curve: training runs at the nested sizes, fitted and never tested
    budget = planner.plan(plan_cfg(
        tmp_path, tiny_weights, f"out={tmp_path / 'budget'}", "plan.budget_minutes=10", "plan.train_seeds=1",
        "plan.strategy=feature_extraction", "plan.fractions=[0.25,0.5,1.0]", "epoch_scale=0.1",
    ))  # fmt: skip
    s = budget["strategy"]  # feature_extraction: 2 head-only epochs on cached features, a second or two a run
    assert len(s["points"]) == 3 and not s["skipped"]
    assert [p["n"] for p in s["curve"]["points"]] == sorted(p["train_images"] for p in s["points"])


# ---------------------------------------------------------------- the command line, end to end


def test_plan_command_line_writes_the_plan_the_curve_and_the_ranking(tmp_path, tiny_weights):
    made = write_pool(tmp_path / "unlabelled", good=6)
    out = tmp_path / "plan"
    result = subprocess.run(
        [sys.executable, "-m", "tlexp.plan", "dataset=synthetic", "model=test_resnet", f"model.weights={tiny_weights}",
         f"pool={tmp_path / 'unlabelled'}", "target=0.95", f"out={out}", "plan.bootstrap=60", "plan.seeds=2",
         "plan.batch=4", "plan.show=4", f"cache.dir={tmp_path / 'cache'}", "data.preflight_cache=null"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "plan.json").read_text())
    assert (out / "curve.png").stat().st_size > 0 and (out / "pool_sheet.png").stat().st_size > 0
    rows = (out / "ranking.csv").read_text().splitlines()
    assert rows[0].startswith("rank,path,predicted") and len(rows) == 1 + 6
    assert {b["path"] for b in summary["pool"]["bad_files"]} == {str(p) for p in made["bad"]}
    assert [f["times"] for f in summary["probe"]["forecasts"]] == [2, 4, 10]
    assert summary["probe"]["target"]["target"] == 0.95
    assert "unreadable files skipped: 2" in result.stdout and "Test is not read" in result.stdout
