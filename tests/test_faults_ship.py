"""Predict and export faults of issue 27, run as a user runs them (`python -m tlexp.predict|export ...`).

Each fault ends in one message and exit status 2, never a traceback or exit 0 for a wrong result, and no file is
lost or left half-written:
- a read-only output folder is named, with the fix (the write probe's clean-up no longer hides the message);
- export's `out=` suffix must be the one of `format=`, an export that fails its check leaves no file under its
  name, and an existing `out=` file is replaced only by an export that passed;
- a predict run that labels nothing (one unreadable file, a folder of them) fails; one with some unreadable
  files labels the rest and lists them;
- the model card finds the run's metrics.json above a `strategy=auto` winner's checkpoint (pilots/<winner>/).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlexp import export
from tlexp.model.inference import sidecar_path
from tlexp.run import atomic
from tlexp.train import train

from .conftest import compose_cfg
from .test_cli import ROOT

# Runs a tlexp module with one folder on a simulated read-only mount: tests run as root, which a chmod 0o555
# does not stop. Every write-like call on a path in the folder fails with EROFS, as Linux does on a read-only
# mount (unlink included, even of a file that does not exist).
READ_ONLY = """
import builtins, errno, io, os, runpy, sys

ro, module = os.path.realpath(sys.argv[1]), sys.argv[2]
sys.argv = [module, *sys.argv[3:]]

def refused(path):
    if isinstance(path, int):
        return False
    real = os.path.realpath(os.fspath(path))
    return real == ro or real.startswith(ro + os.sep)

def guard(fn, writes=lambda *a, **k: True):
    def wrapped(path, *args, **kwargs):
        if refused(path) and writes(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return fn(path, *args, **kwargs)
    return wrapped

def writes_mode(mode="r", *args, **kwargs):
    return any(c in kwargs.get("mode", mode) for c in "wax+")

def writes_flags(flags, *args, **kwargs):
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))

builtins.open = io.open = guard(io.open, writes_mode)
os.open = guard(os.open, writes_flags)
for name in ("unlink", "remove", "mkdir", "rmdir", "replace", "rename"):
    setattr(os, name, guard(getattr(os, name)))
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def tlexp(command: str, *args: str, read_only: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m tlexp.<command> args...`, optionally with `read_only` on a simulated read-only mount."""
    launch = ["-m"] if read_only is None else ["-c", READ_ONLY, str(read_only)]
    return subprocess.run(
        [sys.executable, *launch, f"tlexp.{command}", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def one_message(proc: subprocess.CompletedProcess) -> str:
    """The single `tlexp error:` line of a run that stopped on a user error (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tlexp error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_weights) -> Path:
    """The best checkpoint of a finished tiny run (metrics.json in its run dir, as train leaves it)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg(
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "dataset.images_per_class=16",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=1",
        "cache.mode=off",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "report.enabled=false",
        "report.train_batch_preview=0",
        f"output_dir={tmp / 'run'}",
        f"cache.dir={tmp / 'feature_cache'}",
    )
    return Path(train(cfg)["checkpoint"])


def a_photo(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# ------------------------------------------------------------ 1. a read-only output folder


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_read_only_output_folder_is_one_message_naming_it_and_the_fix(tmp_path, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    args = {  # the write check comes before the model is read: a checkpoint name is enough
        "predict": [f"ckpt={tmp_path / 'model.ckpt'}", f"input={images}", f"out={ro / 'labels'}"],
        "export": [f"ckpt={tmp_path / 'model.ckpt'}", "format=torchscript", f"out={ro / 'model.pt'}"],
    }[command]
    line = one_message(tlexp(command, *args, read_only=ro))
    assert f"cannot write to {ro} (Read-only file system)" in line
    assert "Pass out=<a writable path>/" in line
    assert names(ro) == [] and names(tmp_path) == ["images", "ro"]


def test_a_failed_write_keeps_its_own_error_when_the_temp_file_cannot_be_removed(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    with pytest.raises(ValueError, match="the writer's own error"), atomic.atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("half")
        monkeypatch.setattr(atomic.os, "unlink", refuse)
        raise ValueError("the writer's own error")


# ------------------------------------------------------------ 2. export: out= suffix, check before the rename


@pytest.mark.parametrize(
    ("fmt", "out", "fix"),
    [
        (
            "torchscript",
            "x.onnx",
            "has the suffix of ONNX but format=torchscript writes .pt files: use out={d}/x.pt or format=onnx",
        ),
        (
            "onnx",
            "x.pt",
            "has the suffix of TorchScript but format=onnx writes .onnx files: "
            "use out={d}/x.onnx or format=torchscript",
        ),
        ("torchscript", "model", "has no suffix but format=torchscript writes .pt files: use out={d}/model.pt"),
    ],
    ids=["torchscript as x.onnx", "onnx as x.pt", "no suffix"],
)
def test_an_out_suffix_that_contradicts_the_format_is_refused_before_anything_is_written(ckpt, tmp_path, fmt, out, fix):
    line = one_message(tlexp("export", f"ckpt={ckpt}", f"format={fmt}", f"out={tmp_path / out}"))
    assert f"out={tmp_path / out} {fix.format(d=tmp_path)}" in line
    assert names(tmp_path) == []


@pytest.mark.parametrize("old", [True, False], ids=["over an old export", "into an empty folder"])
def test_an_export_that_fails_its_check_leaves_the_old_file_or_none(ckpt, tmp_path, monkeypatch, capsys, old):
    out = tmp_path / "model.pt"
    if old:
        out.write_bytes(b"the old model")
        sidecar_path(out).write_text("the old card")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no export can pass its check now
    with pytest.raises(SystemExit) as exited:
        export.main([f"ckpt={ckpt}", "format=torchscript", f"out={out}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert "the exported torchscript model differs from the checkpoint by up to" in err and str(out) in err
    if old:
        assert out.read_bytes() == b"the old model" and sidecar_path(out).read_text() == "the old card"
        assert names(tmp_path) == ["model.pt", "model.pt.json"]  # and no temp file left beside them
    else:
        assert names(tmp_path) == []


def test_export_replaces_an_existing_file_and_card_with_a_checked_export(ckpt, tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"the old model")
    sidecar_path(out).write_text("the old card")
    proc = tlexp("export", f"ckpt={ckpt}", "format=torchscript", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(sidecar_path(out).read_text())
    assert card["file"] == "model.pt" and card["format"] == "torchscript" and card["max_abs_diff"] <= 1e-4
    size = card["input"]["shape"][-1]
    assert torch.jit.load(str(out))(torch.zeros(1, 3, size, size)).shape == (1, len(card["class_names"]))
    assert names(tmp_path) == ["model.pt", "model.pt.json"]


# ------------------------------------------------------------ 3. predict that labels nothing


@pytest.mark.parametrize("given", ["one empty file", "a folder of unreadable files"])
def test_predict_that_labels_nothing_exits_2_and_keeps_earlier_predictions(ckpt, tmp_path, given):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    if given == "one empty file":
        spec = folder / "empty.jpg"
    else:
        (folder / "broken.png").write_bytes(b"not an image")
        spec = folder
    (tmp_path / "labels.csv").write_text("earlier predictions\n")
    line = one_message(tlexp("predict", f"ckpt={ckpt}", f"input={spec}", f"out={tmp_path / 'labels'}"))
    assert f"input={spec}:" in line and "empty.jpg" in line and "empty file (0 bytes)" in line
    assert ("broken.png" in line) == (given != "one empty file")
    assert (tmp_path / "labels.csv").read_text() == "earlier predictions\n"
    assert not (tmp_path / "labels.jsonl").exists()


def test_predict_with_some_unreadable_files_labels_the_rest_and_lists_them(ckpt, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    a_photo(folder / "photo.png")
    (folder / "empty.jpg").write_bytes(b"")
    proc = tlexp("predict", f"ckpt={ckpt}", f"input={folder}", f"out={tmp_path / 'labels'}", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "labelled  1 of 2 images" in proc.stdout and "unreadable 1" in proc.stdout
    assert f"{folder / 'empty.jpg'}: BadImage" in proc.stdout
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert len(rows) == 3 and any("empty file (0 bytes)" in r for r in rows)


# ------------------------------------------------------------ 4. the card of a strategy=auto winner


def test_the_card_of_an_auto_winner_holds_the_auto_runs_training_summary(ckpt, tmp_path):
    run = tmp_path / "auto"
    winner = run / "pilots" / "finetune" / "checkpoints" / ckpt.name  # where strategy=auto leaves it
    winner.parent.mkdir(parents=True)
    shutil.copy(ckpt, winner)
    shutil.copy(ckpt.parent.parent / "metrics.json", run / "metrics.json")
    metrics = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "model.pt"
    proc = tlexp("export", f"ckpt={winner}", "format=torchscript", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    training = json.loads(sidecar_path(out).read_text())["training"]
    assert training is not None and training["metrics_file"] == str(run / "metrics.json")
    assert training["strategy"] == metrics["strategy"] and training["test"] == metrics["test"]


def test_the_card_looks_for_metrics_only_a_few_folders_up(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"strategy": "finetune"}))
    deep = tmp_path / "a" / "b" / "c" / "d" / "checkpoints" / "best.ckpt"
    assert export.training_summary(deep) is None
    near = tmp_path / "pilots" / "gradual" / "checkpoints" / "best.ckpt"
    assert export.training_summary(near)["strategy"] == "finetune"


def test_an_export_perturbed_past_the_tolerance_is_refused_and_not_written(ckpt, tmp_path, monkeypatch, capsys):
    real = export.exported_forward

    def perturbed(path, suffix, input_name):  # the written model's outputs, off by 1e-3 (the tolerance is 1e-4)
        forward = real(path, suffix, input_name)
        return lambda x: forward(x) + 1e-3

    monkeypatch.setattr(export, "exported_forward", perturbed)
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as exited:
        export.main([f"ckpt={ckpt}", "format=torchscript", f"out={out}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "differs from the checkpoint by up to 1.00e-03 (> 0.0001)" in err
    assert names(tmp_path) == []
