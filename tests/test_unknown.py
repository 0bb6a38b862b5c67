"""'unknown' (evaluation/unknown.py): scores, a threshold chosen on val only, kept in metrics.json and the best
checkpoint, and used by predict (CLI and API) to label inputs under it `unknown`."""

from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import tlexp
from tests.conftest import compose_cfg
from tlexp import export, predict
from tlexp.config.errors import ConfigError
from tlexp.config.validate import validate_config
from tlexp.data.sources import synthetic
from tlexp.evaluation import calibration, unknown
from tlexp.model.inference import load_classifier, load_trained
from tlexp.run.build import build_datamodule
from tlexp.train import train


def logits_for(n: int, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right about 80% of the time, with some spread in confidence."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen) * 2
    logits[torch.arange(n), labels] += 3 * torch.rand(n, generator=gen) + 0.5
    return logits, labels


# ---------------------------------------------------------------- the scores and the threshold


def test_scores_are_the_temperature_scaled_msp_and_the_negative_energy():
    logits, _ = logits_for(50)
    t = 1.7
    msp = (logits / t).softmax(dim=1).max(dim=1).values
    energy = t * torch.log(torch.exp(logits / t).sum(dim=1))  # -E(x; T), Liu et al. 2020, eq. 2 negated
    torch.testing.assert_close(unknown.score(logits, t, "msp"), msp)
    torch.testing.assert_close(unknown.score(logits, t, "energy"), energy)
    with pytest.raises(ValueError, match="energy, msp"):
        unknown.score(logits, t, "entropy")


def test_the_knn_score_is_the_cosine_similarity_to_the_kth_nearest_training_image():
    gen = torch.Generator().manual_seed(0)
    bank, features = torch.randn(40, 8, generator=gen), torch.randn(5, 8, generator=gen)
    by_hand = [
        sorted((float(torch.dot(f / f.norm(), b / b.norm())) for b in bank), reverse=True)[unknown.K - 1]
        for f in features
    ]
    torch.testing.assert_close(unknown.knn_score(features, bank), torch.tensor(by_hand))
    assert torch.allclose(unknown.knn_score(bank[:3] * 5, bank, k=1), torch.ones(3))  # itself, at any scale
    assert unknown.knn_score(features, bank[:4]).shape == (5,)  # fewer than K images: the farthest of them


@pytest.mark.parametrize("reject", [0.0, 0.01, 0.05, 0.2])
def test_the_threshold_rejects_the_stated_share_of_val(reject):
    logits, labels = logits_for(1000)
    found = unknown.fit(logits, labels, reject, "energy")
    assert found["temperature"] == pytest.approx(calibration.fit_temperature(logits, labels))
    scores = unknown.score(logits, found["temperature"], "energy")
    below = int((scores < found["threshold"]).sum())
    assert below == math.floor(reject * 1000) and found["reject_rate"] == pytest.approx(below / 1000)
    for kind in unknown.LOGIT_SCORES:  # every score is measured on val, the chosen one decides
        s = unknown.score(logits, found["temperature"], kind)
        assert int((s < found["by_score"][kind]["threshold"]).sum()) == math.floor(reject * 1000)
    assert (found["score"], found["val_images"], found["reject_requested"]) == ("energy", 1000, reject)
    msp = unknown.fit(logits, labels, reject, "msp")
    assert msp["threshold"] == found["by_score"]["msp"]["threshold"]


def test_the_threshold_is_a_function_of_val_and_the_training_features_alone():
    """`fit` takes val (logits, labels, features) and the training features, nothing else."""
    val, gen = logits_for(300, seed=1), torch.Generator().manual_seed(1)
    val_features, bank = torch.randn(300, 16, generator=gen), torch.randn(500, 16, generator=gen)
    first = unknown.fit(*val, 0.05, "knn", val_features, bank)
    logits_for(300, seed=2)  # other data in the process changes nothing
    assert unknown.fit(*val, 0.05, "knn", val_features, bank) == first
    knn = unknown.knn_score(val_features, bank)
    assert first["threshold"] == unknown.threshold_at(knn, 0.05) and int((knn < first["threshold"]).sum()) == 15
    assert (first["k"], first["bank_images"]) == (unknown.K, 500) and set(first["by_score"]) == set(unknown.SCORES)
    names = list(inspect.signature(unknown.fit).parameters)
    assert names == ["val_logits", "val_labels", "reject", "kind", "val_features", "bank"]
    with pytest.raises(ValueError, match="needs the val features"):
        unknown.fit(*val, 0.05, "knn")
    # An export gives logits only: the record falls back to energy's threshold on the same val images.
    fallback = unknown.for_logits({**first, "bank": bank})
    assert fallback["score"] == "energy" and fallback["threshold"] == first["by_score"]["energy"]["threshold"]
    assert "bank" not in fallback


def test_small_val_sets_keep_temperature_one_and_say_why():
    logits, labels = logits_for(30)
    found = unknown.fit(logits, labels, 0.05, "energy")
    assert found["temperature"] == 1.0 and "fewer than 50" in found["temperature_skipped"]
    scores = unknown.score(logits, 1.0)
    # floor(0.05 x 30) = 1 image under the threshold: the threshold is the second smallest score
    assert found["threshold"] == float(scores.sort().values[1]) and int((scores < found["threshold"]).sum()) == 1


def test_auroc_and_accepted_share():
    gen = np.random.default_rng(0)
    known = np.round(gen.normal(1.0, 1.0, 300), 1)  # rounded: ties between the two sets count half
    alien = np.round(gen.normal(0.0, 1.0, 200), 1)
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert unknown.auroc(known, alien) == pytest.approx(roc_auc_score(labels, np.r_[known, alien]))
    assert unknown.auroc([2, 3], [0, 1]) == 1.0 and unknown.auroc([0, 1], [2, 3]) == 0.0
    assert unknown.accepted(np.array([0.1, 0.5, 0.9, 1.0]), 0.5) == 0.75


def test_separation_of_known_and_foreign_images_by_every_score():
    known, labels = logits_for(400, seed=3)
    gen = torch.Generator().manual_seed(5)
    centres = torch.randn(5, 16, generator=gen) * 3  # known images' features sit near their class centre
    feats = centres[labels] + torch.randn(400, 16, generator=gen)
    val, val_labels = logits_for(400, seed=4)  # val-like data: another draw of the same kind
    val_feats = centres[val_labels] + torch.randn(400, 16, generator=gen)
    bank = centres[torch.randint(0, 5, (300,), generator=gen)] + torch.randn(300, 16, generator=gen)
    record = {**unknown.fit(val, val_labels, 0.05, "knn", val_feats, bank), "bank": bank}
    foreign = (torch.randn(300, 16, generator=gen) * 3, torch.randn(300, 5, generator=gen))  # no class stands out
    found = unknown.separation((feats, known), foreign, record)
    assert found["knn"]["auroc"] > 0.9
    t = record["temperature"]
    for kind in unknown.LOGIT_SCORES:
        t, cut = record["temperature"], record["by_score"][kind]["threshold"]
        assert found[kind]["auroc"] == pytest.approx(
            roc_auc_score(
                np.r_[np.ones(400), np.zeros(300)],
                np.r_[unknown.score(known, t, kind), unknown.score(foreign[1], t, kind)],
            )
        )
        share = float((unknown.score(foreign[1], t, kind) >= cut).float().mean())
        assert found[kind]["accepted"] == pytest.approx(share)
        assert found[kind]["auroc"] > 0.7 and found[kind]["known_rejected"] < 0.15


def test_config_keys_are_validated():
    with pytest.raises(ConfigError, match=r"report.unknown_reject=0.7: must be a number >= 0 and <= 0.5"):
        validate_config(compose_cfg("report.unknown_reject=0.7"))
    with pytest.raises(ConfigError, match=r"report.unknown_score=entropy: must be one of knn, energy, msp"):
        validate_config(compose_cfg("report.unknown_score=entropy"))


# ---------------------------------------------------------------- after training


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    """A tiny feature_extraction run whose test split (48 images) is larger than its val split (32)."""
    base = tmp_path_factory.mktemp("unknown")
    cfg = compose_cfg(
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "dataset.test_fraction=0.3",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=3",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "report.enabled=false",  # the threshold does not need the report
        "report.train_batch_preview=0",
        "report.unknown_reject=0.1",
        f"output_dir={base / 'run'}",
        f"cache.dir={base / 'cache'}",
    )
    return {"cfg": cfg, "metrics": train(cfg), "base": base}


def test_training_chooses_the_threshold_on_val_and_keeps_it_in_metrics_and_checkpoint(run):
    metrics, cfg = run["metrics"], run["cfg"]
    found = metrics["unknown"]
    sizes = metrics["dataset_sizes"]
    assert sizes["val"] != sizes["test"]
    assert found["val_images"] == sizes["val"]  # val, not test
    assert set(found) >= {"score", "temperature", "threshold", "reject_rate", "val_images"}
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["unknown"] == found
    ckpt = metrics["checkpoint"]
    kept = unknown.from_checkpoint(ckpt)
    assert unknown.without_bank(kept) == found and unknown.without_bank(load_classifier(ckpt).unknown) == found
    # The reference features are the training images' (all of them: fewer than BANK), as the backbone gives them.
    module = load_trained(ckpt)
    dm = build_datamodule(cfg, module.eval_preprocessing())
    dm.setup()
    train_feats, _, _ = unknown.collect(module, dm.evaluation_loader("train"))
    assert found["score"] == "knn" and found["bank_images"] == sizes["train"] == len(kept["bank"])
    torch.testing.assert_close(kept["bank"], train_feats, atol=2e-2, rtol=1e-2)  # stored in float16
    # The same threshold again from the best model's val split, by hand: the run read val and nothing else.
    val_feats, val_logits, val_labels = unknown.collect(module, dm.evaluation_loader("val"))
    again = unknown.fit(val_logits, val_labels, 0.1, "knn", val_feats, kept["bank"])
    assert again["threshold"] == pytest.approx(found["threshold"], abs=1e-4)
    test_feats, test_logits, _ = unknown.collect(module, dm.evaluation_loader("test"))
    test_scores = unknown.knn_score(test_feats, kept["bank"])
    assert found["threshold"] != pytest.approx(unknown.threshold_at(test_scores, 0.1), abs=1e-6)


def a_picture(folder: Path, name: str, pixels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)
    return folder / name


def new_images(folder: Path) -> list[Path]:
    """Images of the training classes (another seed) and some that are nothing like them."""
    pool = synthetic(num_classes=4, per_class=3, image_size=32, seed=7).splits["pool"]
    paths = [a_picture(folder, f"known_{i}.png", pool.image(i).permute(1, 2, 0).numpy()) for i in range(len(pool))]
    gen = np.random.default_rng(0)
    for i in range(4):
        paths.append(a_picture(folder, f"alien_{i}.png", gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    paths.append(a_picture(folder, "black.png", np.zeros((32, 32, 3), np.uint8)))
    return paths


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def test_predict_labels_inputs_under_the_threshold_unknown_with_their_score(run, tmp_path, capsys):
    ckpt, found = run["metrics"]["checkpoint"], run["metrics"]["unknown"]
    new_images(tmp_path / "new")
    predict.main([f"ckpt={ckpt}", f"input={tmp_path / 'new'}", "top_k=2", f"out={tmp_path / 'p'}", "progress=false"])
    assert "unknown" in capsys.readouterr().out
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 17
    for name, r in rows.items():
        below = float(r["score"]) < found["threshold"]
        assert r["prediction"] == ("unknown" if below else r["label"]), name
    assert any(r["prediction"] == "unknown" for r in rows.values())  # noise and a black square are not classes
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {(Path(r["path"]).name, r["prediction"], r["score"]) for r in lines} == {
        (n, r["prediction"], float(r["score"])) for n, r in rows.items()
    }
    # unknown=false: every image gets its top class, and no score is written.
    argv = [f"ckpt={ckpt}", f"input={tmp_path / 'new'}", f"out={tmp_path / 'off'}", "unknown=false", "progress=false"]
    predict.main(argv)
    off = read_csv(tmp_path / "off.csv")
    assert all(r["prediction"] == r["label"] and r["score"] == "" for r in off.values())


def test_the_api_reads_the_threshold_and_labels_the_same_images_unknown(run, tmp_path):
    ckpt, found = run["metrics"]["checkpoint"], run["metrics"]["unknown"]
    paths = new_images(tmp_path / "new")
    model = tlexp.load(ckpt)
    assert model.unknown == found
    scores = model.score(paths)
    labels = model.predict(paths)
    top = [model.classes[i] for i in model.predict_proba(paths).argmax(axis=1)]
    assert labels == [("unknown" if s < found["threshold"] else t) for s, t in zip(scores, top, strict=True)]
    assert "unknown" in labels and model.predict(paths, unknown=False) == top


def test_an_export_carries_the_threshold_of_the_checkpoint_it_came_from(run, tmp_path):
    """Logits only: energy's threshold on the same val images decides (knn needs the features)."""
    ckpt, found = Path(run["metrics"]["checkpoint"]), run["metrics"]["unknown"]
    out = tmp_path / "model.pt"
    export.export(load_trained(ckpt), "torchscript", out, export.training_summary(ckpt), str(ckpt))
    exported = load_classifier(out).unknown
    assert exported == unknown.for_logits(found) and exported["score"] == "energy"
    assert exported["threshold"] == found["by_score"]["energy"]["threshold"]
    assert json.loads(Path(f"{out}.json").read_text())["unknown"] == exported  # in the card: it travels with the file
    # Exported from another checkpoint of the run (not the one the threshold belongs to): no threshold.
    other = tmp_path / "other.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    del state[unknown.CHECKPOINT_KEY]
    torch.save(state, other)
    export.export(load_trained(other), "torchscript", out, export.training_summary(ckpt), str(other))
    assert load_classifier(out).unknown is None
