"""After training: the evaluation report, TensorBoard images and hparams, predict, export (ONNX + TorchScript).

One tiny run (shared by the module) on an image folder whose class names are words, not 0..n-1.
"""

from __future__ import annotations

import csv
import glob
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import compose_cfg
from tlexp import evaluate, export, predict
from tlexp.config.errors import DataError
from tlexp.data.images import open_rgb
from tlexp.data.sources import synthetic
from tlexp.data.transforms import eval_transform
from tlexp.evaluation import report
from tlexp.model.inference import load_classifier, load_trained
from tlexp.train import train

ROOT = Path(__file__).resolve().parents[1]
# Folder names sort to ant, mole, zebra: index order differs from the synthetic class order on purpose.
FOLDERS = ["zebra", "ant", "mole"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    base = tmp_path_factory.mktemp("after")
    source = synthetic(num_classes=3, per_class=16, image_size=40, seed=1)
    pool = source.splits["pool"]
    for i in range(len(pool)):
        folder = base / "images" / FOLDERS[pool.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pool.image(i).permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    cfg = compose_cfg(
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=imagefolder",
        f"dataset.root={base / 'images'}",
        "dataset.val_fraction=0.2",
        "dataset.test_fraction=0.25",
        "preprocess.image_size=32",  # crop_pct stays the backbone's 0.875: resize 37, centre-crop 32
        "strategy=finetune",
        "strategy.phases=[{name: all, epochs: 2, train: [all], lr: 3.0e-3}]",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "report.top_losses=8",
        "report.train_batch_preview=8",
        f"output_dir={base / 'run'}",
    )
    metrics = train(cfg)
    (base / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, base / "run" / ".hydra" / "config.yaml")  # what the Hydra entry point leaves in a run dir
    return {"dir": base / "run", "metrics": metrics, "images": base / "images", "base": base}


def test_training_leaves_the_evaluation_report(run):
    out, metrics = run["dir"] / "evaluation", run["metrics"]
    for name in ("confusion_matrix.png", "reliability.png", "classification_report.md", "classification_report.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (run["dir"] / "train_batch.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "top_losses.png").is_file() == (summary["misclassified"] > 0)
    with open(out / "classification_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["ant", "mole", "zebra", "macro avg", "weighted avg"]
    assert sum(int(r["support"]) for r in rows[:3]) == metrics["dataset_sizes"]["test"] == summary["images"]
    # Our report and torchmetrics (logged during test) must agree on the same checkpoint.
    assert summary["accuracy"] == pytest.approx(metrics["test"]["acc"], abs=1e-4)
    assert float(rows[3]["f1"]) == pytest.approx(metrics["test"]["f1"], abs=1e-3)
    # ECE (torchmetrics) agrees with the reliability bins drawn in reliability.png (calibration.py), computed apart.
    bins = [b for b in summary["reliability_bins"] if b["count"]]
    by_bins = sum(b["count"] / summary["images"] * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert summary["ece"] == pytest.approx(by_bins, abs=1e-6)
    # report.temperature=true on a val set this small: the scaling is skipped, and the report says why.
    assert "fewer than 50" in summary["temperature_skipped"] and "temperature" not in summary
    assert metrics["evaluation"]["ece"] == summary["ece"]
    assert "| ant |" in (out / "classification_report.md").read_text()
    # Every figure with its interval and count: Wilson's bounds from the count of right answers, by hand.
    n, right = summary["images"], n_right(summary)
    z = 1.959963984540054
    centre = (right / n + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * ((right / n) * (1 - right / n) / n + z * z / (4 * n * n)) ** 0.5
    acc = metrics["test_intervals"]["acc"]
    assert (acc["low"], acc["high"], acc["n"]) == (
        pytest.approx(centre - half, abs=1e-4),
        pytest.approx(centre + half, abs=1e-4),
        n,
    )
    assert summary["intervals"]["acc"] == acc
    f1 = metrics["test_intervals"]["f1"]
    assert f1["low"] <= metrics["test"]["f1"] + 1e-4 and f1["high"] >= metrics["test"]["f1"] - 1e-4
    assert f"on {n} images" in (out / "classification_report.md").read_text()


def n_right(summary: dict) -> int:
    return summary["images"] - summary["misclassified"]


def test_tensorboard_holds_the_images_and_an_hparams_session_with_its_metrics(run):
    images, scalars, hparams = set(), set(), {}
    for path in glob.glob(str(run["dir"] / "tensorboard" / "events.out.tfevents.*")):
        acc = EventAccumulator(path, size_guidance={"images": 1, "scalars": 0, "tensors": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
        scalars |= set(acc.Tags()["scalars"])
        hparams.update(acc._plugin_to_tag_to_content.get("hparams", {}))
    assert {"eval/confusion", "eval/reliability", "train/augmented_batch"} <= images
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert {h.name for h in experiment.hparam_infos} >= {"model", "strategy", "train_images", "lr/all"}
    assert start.hparams["strategy"].string_value == "finetune"
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    # The HParams tab shows a metric only when the run also has it as a scalar.
    assert {"hparams/test_acc", "hparams/test_ece"} <= metric_tags <= scalars


def test_checkpoint_carries_class_names_and_preprocessing(run):
    module = load_trained(run["metrics"]["checkpoint"])
    assert module.class_names == ["ant", "mole", "zebra"]
    assert module.eval_preprocessing().as_dict() == run["metrics"]["preprocessing"]
    assert module.eval_preprocessing().image_size == 32


def _sample_images(run, n=4) -> list[Path]:
    return sorted(run["images"].rglob("*.png"))[::9][:n]


def test_onnx_and_torchscript_exports_match_the_lightning_model(run):
    ckpt = Path(run["metrics"]["checkpoint"])
    module = load_trained(ckpt)
    p = module.eval_preprocessing()
    transform = eval_transform(p.image_size, p.mean, p.std, p.interpolation, p.crop_pct)
    x = torch.stack([transform(open_rgb(p)) for p in _sample_images(run)])
    with torch.no_grad():
        expected = module(x)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        card = export.run(compose_export(ckpt, fmt))
        path = run["dir"] / "export" / f"{ckpt.stem}{suffix}"
        got = load_classifier(path).forward(x)
        assert (got - expected).abs().max().item() < 1e-4, fmt
        saved = json.loads(Path(f"{path}.json").read_text())
        assert saved == card and saved["class_names"] == ["ant", "mole", "zebra"]
        assert saved["preprocessing"] == p.as_dict() and saved["input"]["shape"] == ["batch", 3, 32, 32]
        assert saved["training"]["strategy"] == "finetune" and "acc" in saved["training"]["test"]
        assert saved["training"]["dataset_sizes"] == run["metrics"]["dataset_sizes"]


def compose_export(ckpt: Path, fmt: str):
    from tlexp.config.cli import parse_args

    return parse_args([f"ckpt={ckpt}", f"format={fmt}"], "export", "")


def _read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def test_predict_labels_images_lists_unreadable_ones_and_agrees_across_formats(run, tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    chosen = _sample_images(run)
    for p in chosen:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "empty.jpg").write_bytes(b"")
    ckpt = Path(run["metrics"]["checkpoint"])
    onnx_file = run["dir"] / "export" / "for_predict.onnx"
    export.export(load_trained(ckpt), "onnx", onnx_file)

    predict.main([f"ckpt={ckpt}", f"input={folder}", "top_k=2", f"out={tmp_path / 'ckpt'}", "progress=false"])
    assert "unreadable 2" in capsys.readouterr().out
    by_ckpt = _read_csv(tmp_path / "ckpt.csv")
    assert set(by_ckpt) == {p.name for p in chosen} | {"broken.png", "empty.jpg"}
    assert by_ckpt["broken.png"]["error"] and not by_ckpt["broken.png"]["label"]
    assert by_ckpt["empty.jpg"]["error"]

    # Top-1 against the module run by hand, with names (not indices) in the output.
    module = load_trained(ckpt)
    p = module.eval_preprocessing()
    transform = eval_transform(p.image_size, p.mean, p.std, p.interpolation, p.crop_pct)
    for p in chosen:
        with torch.no_grad():
            probs = module(transform(open_rgb(p))[None]).softmax(1)[0]
        row = by_ckpt[p.name]
        assert row["label"] == module.class_names[int(probs.argmax())]
        assert float(row["prob"]) == pytest.approx(float(probs.max()), abs=1e-5)
        assert row["label_2"] in module.class_names and float(row["prob_2"]) <= float(row["prob"])

    predict.main([f"ckpt={onnx_file}", f"input={folder}/*.png", "top_k=2", f"out={tmp_path / 'onnx'}", "tta=true"])
    by_onnx = _read_csv(tmp_path / "onnx.csv")
    assert set(by_onnx) == {p.name for p in chosen} | {"broken.png"}  # the glob picks .png only
    lines = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert all(("top" in r) != ("error" in r) for r in lines) and len(lines) == len(by_onnx)
    # TTA: the mean of the image and its mirror, computed by hand.
    p = chosen[0]
    x = transform(open_rgb(p))[None]
    with torch.no_grad():
        mean = (module(x).softmax(1) + module(x.flip(3)).softmax(1))[0] / 2
    assert float(by_onnx[p.name]["prob"]) == pytest.approx(float(mean.max()), abs=1e-4)


def test_predict_command_line_takes_lightning_checkpoint_names_and_globs(run, tmp_path):
    ckpt = run["metrics"]["checkpoint"]
    assert "=" in Path(ckpt).name  # best-epoch=NN.ckpt: Hydra's override grammar would reject it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlexp.predict",
            f"ckpt={ckpt}",
            f"input={run['images']}/ant/*.png",
            f"out={tmp_path}/p",
        ],  # noqa: E501
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 1


def test_predict_and_export_say_what_is_wrong(tmp_path, capsys):
    for argv in (
        ["ckpt=nope.ckpt", f"input={tmp_path}"],
        ["input=x"],
    ):
        with pytest.raises(SystemExit) as exited:
            predict.main(argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "tlexp error: checkpoint nope.ckpt does not exist" in err and "missing ckpt=..." in err
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("hello")
    with pytest.raises(SystemExit):
        export.main([f"ckpt={bogus}"])
    assert "is not a tlexp checkpoint" in capsys.readouterr().err


def test_evaluate_on_demand_uses_the_run_dataset_and_refuses_other_classes(run, tmp_path):
    ckpt = run["metrics"]["checkpoint"]
    summary = evaluate.main([f"ckpt={ckpt}", f"out={tmp_path / 'eval'}", "report.temperature=false"])
    assert summary["accuracy"] == pytest.approx(run["metrics"]["evaluation"]["accuracy"])
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file() and "temperature" not in summary
    with pytest.raises(DataError, match="trained on classes"):
        evaluate.run(evaluate.parse_args([f"ckpt={ckpt}", "dataset=synthetic"], "evaluate", ""))


def test_per_class_report_from_a_known_confusion_matrix():
    matrix = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    rows = report.per_class_report(matrix, ["a", "b", "c"])
    assert rows[0]["precision"] == pytest.approx(8 / 9) and rows[0]["recall"] == pytest.approx(0.8)
    assert rows[1]["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rows[2]["support"] == 0 and rows[2]["f1"] == 0
    assert rows[4]["recall"] == pytest.approx(11 / 14)  # support-weighted recall = accuracy


def test_report_confusion_matrix_and_ece_match_a_hand_computation(tmp_path, monkeypatch):
    # (true class, predicted probabilities); confidences sit inside 15-bin cells, away from the edges k/15.
    rows = [
        (0, [0.9, 0.05, 0.05]),
        (0, [0.9, 0.05, 0.05]),
        (0, [0.1, 0.7, 0.2]),
        (1, [0.2, 0.7, 0.1]),
        (1, [0.2, 0.7, 0.1]),
        (1, [0.55, 0.25, 0.2]),
        (2, [0.1, 0.35, 0.55]),
        (2, [0.45, 0.3, 0.25]),
    ]
    labels = torch.tensor([t for t, _ in rows])
    logits = torch.tensor([p for _, p in rows]).log()  # softmax(log p) = p
    shown = []
    original = report.figures.confusion_figure
    monkeypatch.setattr(report.figures, "confusion_figure", lambda m, n: shown.append(m) or original(m, n))
    datamodule = SimpleNamespace(class_names=["a", "b", "c"])
    summary = report.evaluate(None, datamodule, tmp_path, temperature=False, top_loss_count=0, logits=(logits, labels))
    np.testing.assert_array_equal(shown[0], [[2, 1, 0], [1, 2, 0], [1, 0, 1]])  # rows: true class, columns: predicted
    # Bins by confidence: 0.9 (2 right of 2), 0.7 (2 of 3), 0.55 (1 of 2), 0.45 (0 of 1).
    ece = 2 / 8 * (1 - 0.9) + 3 / 8 * abs(2 / 3 - 0.7) + 2 / 8 * abs(1 / 2 - 0.55) + 1 / 8 * abs(0 - 0.45)
    assert summary["ece"] == pytest.approx(ece, abs=1e-6)
    assert summary["accuracy"] == pytest.approx(5 / 8) and summary["misclassified"] == 3
    with open(tmp_path / "classification_report.csv") as f:
        by_class = {r["class"]: r for r in csv.DictReader(f)}
    assert [int(by_class[c]["support"]) for c in "abc"] == [3, 3, 2]
    assert float(by_class["a"]["precision"]) == pytest.approx(2 / 4, abs=1e-4)
    assert json.loads((tmp_path / "summary.json").read_text())["ece"] == summary["ece"]
