"""INT8 export (issue 31): `python -m tlexp.export ckpt=... format=onnx quantize=int8`.

- the int8 model is written with a card that holds its calibration and its check (agreement with the float model,
  accuracy drop on the run's test set), and its outputs agree with the float model's on most test images;
- an int8 model that loses more than `max_drop` points is refused with the figures, exit status 2, and nothing is
  written (an earlier file under the name stays as it was);
- calibration reads training images only, never test;
- quantize=int8 with format=torchscript, or with a checkpoint away from its run, is one message before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tlexp import export
from tlexp.config.errors import ConfigError
from tlexp.model.inference import load_classifier, load_trained, sidecar_path
from tlexp.train import train

from .conftest import compose_cfg
from .test_faults_ship import names, tlexp

CALIBRATION = 48  # of the tiny run's 104 training images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_weights) -> Path:
    """The best checkpoint of a finished tiny run (config.yaml and metrics.json in its run dir, as train leaves
    them): the synthetic set's 4 classes, 104 train / 24 val / 32 test images. Fine-tuned, so that BatchNorm holds
    real statistics: the tiny backbone's weights are random, and a head trained on its raw features alone
    (feature_extraction) reads differences that int8 activations round away (test accuracy 1.0 -> 0.25)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg(
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "strategy=finetune",
        "strategy.phases.0.epochs=10",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "report.enabled=false",
        "report.train_batch_preview=0",
        f"output_dir={tmp / 'run'}",
        f"cache.dir={tmp / 'feature_cache'}",
    )
    return Path(train(cfg)["checkpoint"])


def int8_args(ckpt: Path, out: Path, *more: str) -> list[str]:
    return [f"ckpt={ckpt}", "format=onnx", "quantize=int8", f"calibration_images={CALIBRATION}", f"out={out}", *more]


def test_int8_export_agrees_with_the_float_model_and_its_card_says_how_well(ckpt, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    proc = tlexp("export", *int8_args(ckpt, out, "max_drop=10"))  # 32 test images: one flip is 3.1 points
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "int8      QDQ" in proc.stdout and "top-1 agreement" in proc.stdout
    assert names(tmp_path) == ["model.onnx", "model.onnx.json"]

    card = json.loads(sidecar_path(out).read_text())
    q = card["quantization"]
    assert card["dtype"] == "int8" and card["format"] == "onnx" and q["format"] == "QDQ"
    assert q["calibration"] == {"split": "train", "images": CALIBRATION, "asked": CALIBRATION, "transform": "eval",
                                "seed": export.CALIBRATION_SEED}  # fmt: skip
    check = q["check"]
    assert check["split"] == "test" and check["images"] == 32 and check["max_drop"] == 10.0
    assert check["drop_points"] <= 10.0 and check["agreement"]["n"] == 32 and check["agreement"]["value"] >= 0.75
    drop = 100 * (check["float_acc"]["value"] - check["int8_acc"]["value"])
    assert check["drop_points"] == pytest.approx(drop, abs=0.01)
    assert q["float_graph_max_abs_diff"] <= export.TOLERANCE and card["max_abs_diff"] == check["max_abs_diff"] > 0

    # Really int8: quantised weights in the graph, and the file a fraction of the float one.
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) >= sum(n.op_type == "Conv" for n in graph.node)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)

    # Its outputs, loaded as predict loads them, against the float checkpoint on the run's own test images.
    module = load_trained(ckpt)
    datamodule = export.run_datamodule(ckpt, module)
    x = torch.cat([batch for batch, _ in datamodule._loader("test", train=False)])
    with torch.inference_mode():
        expected = module(x).argmax(1)
    got = load_classifier(out).forward(x).argmax(1)
    assert (got == expected).float().mean().item() >= 0.75
    assert (got == expected).float().mean().item() == pytest.approx(check["agreement"]["value"], abs=1e-3)


@pytest.mark.parametrize("old", [True, False], ids=["over an old export", "into an empty folder"])
def test_an_int8_model_past_the_threshold_is_refused_with_the_figures_and_nothing_written(
    ckpt, tmp_path, monkeypatch, capsys, old
):
    out = tmp_path / "model.onnx"
    if old:
        out.write_bytes(b"the old model")
        sidecar_path(out).write_text("the old card")
    real = export._onnx_session

    def perturbed(path: Path):  # the quantised model's logits shifted by one class: every top-1 changes
        forward = real(path)
        return forward if path.name == "float.onnx" else (lambda x: np.roll(forward(x), 1, axis=1))

    monkeypatch.setattr(export, "_onnx_session", perturbed)
    with pytest.raises(SystemExit) as exited:
        export.main(int8_args(ckpt, out))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("tlexp error:"))
    assert "the int8 model loses" in line and "on 32 test images, more than max_drop=1" in line
    assert "float 0." in line and "int8 0." in line and "top-1 agreement 0.0" in line
    assert f"{out} is left as it was" in line and "calibration_images=" in line
    if old:
        assert out.read_bytes() == b"the old model" and sidecar_path(out).read_text() == "the old card"
        assert names(tmp_path) == ["model.onnx", "model.onnx.json"]  # and no temp file beside them
    else:
        assert names(tmp_path) == []


def test_calibration_reads_training_images_only(ckpt, tmp_path, monkeypatch):
    reads: list[set[str]] = []
    real = export._image_batches

    def spy(datamodule, images, batch_size=64):
        reads.append(set(images.ids()))
        yield from real(datamodule, images, batch_size)

    monkeypatch.setattr(export, "_image_batches", spy)
    card = export.main(int8_args(ckpt, tmp_path / "model.onnx"))
    splits = export.run_datamodule(ckpt, load_trained(ckpt)).splits
    train, val, test = (set(splits[s].ids()) for s in ("train", "val", "test"))
    calibration, checked = reads  # one pass for the quantiser's ranges, one for the check
    assert calibration <= train and not calibration & (val | test)
    assert len(calibration) == CALIBRATION == card["quantization"]["calibration"]["images"]
    assert checked == test


def test_calibration_asks_for_more_images_than_train_holds_and_uses_them_all(ckpt):
    datamodule = export.run_datamodule(ckpt, load_trained(ckpt))
    chosen = export.calibration_images(datamodule, 10_000)
    assert sorted(chosen.ids()) == sorted(datamodule.splits["train"].ids())
    again = export.calibration_images(datamodule, CALIBRATION)
    assert again.ids() == export.calibration_images(datamodule, CALIBRATION).ids()  # seeded: the same images


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["format=torchscript", "quantize=int8"], "quantize=int8 goes with format=onnx (now format=torchscript)"),
        (["format=onnx", "quantize=int4"], "quantize=int4: must be one of int8 or null"),
        (["format=onnx", "quantize=int8", "max_drop=-1"], "max_drop=-1: must be a number >= 0 and <= 100"),
        (["format=onnx", "quantize=int8", "calibration_images=0"], "calibration_images=0: must be an integer >= 1"),
    ],
    ids=["torchscript", "int4", "negative max_drop", "no calibration images"],
)
def test_bad_int8_settings_are_one_message_before_any_work(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as exited:  # the checkpoint does not exist: these stop before it is read
        export.main([f"ckpt={tmp_path / 'model.ckpt'}", *args, f"out={tmp_path / 'm.onnx'}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tlexp error:")]
    assert len(lines) == 1 and says in lines[0], err
    assert names(tmp_path) == []


def test_int8_needs_the_run_the_checkpoint_came_from(ckpt, tmp_path):
    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    alone.write_bytes(ckpt.read_bytes())
    with pytest.raises(ConfigError, match=r"no run config\.yaml was found next to .*export without quantize"):
        export.run_datamodule(alone, load_trained(alone))
