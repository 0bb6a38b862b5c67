"""Each CLI as a user runs it, with bad values: exit status 2, one message naming the key or file, no traceback,
and nothing already written changed. A few cases per CLI here; the longer list is marked slow."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", f"tlexp.{cli}", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes: what a failed command must leave as it was."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def written(tmp_path) -> Path:
    """A finished run's folder: a metrics.json, a checkpoint-looking file, earlier predictions."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"best_val_acc": 0.9}')
    (run / "checkpoints" / "last.ckpt").write_bytes(os.urandom(256))
    (run / "predictions.csv").write_text("path,label\n")
    return run


def assert_refused(proc: subprocess.CompletedProcess, *named: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert "tlexp error: " in proc.stderr
    for name in named:
        assert name in proc.stderr, (name, proc.stderr[-2000:])


def cases(written: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """id -> (cli, arguments, what the message must name)."""
    ckpt = str(written / "checkpoints" / "last.ckpt")
    here = f"hydra.run.dir={written}"
    txt = written.parent / "texts"
    for name in ("a/x.txt", "b/y.txt"):
        (txt / name).parent.mkdir(parents=True, exist_ok=True)
        (txt / name).write_text("hi")
    return {
        "train bad values": (
            "train",
            ["data.batch_size=0", "trainer.precision=banana", here],
            ["data.batch_size=0", "trainer.precision=banana"],
        ),
        "train unknown key": ("train", ["data.batchsize=3", here], ["data.batchsize", "data.batch_size"]),
        "train gpu": ("train", ["trainer.accelerator=gpu", here], ["trainer.accelerator=gpu"]),
        "train seed": ("train", ["seed=abc", here], ["seed=abc"]),
        "train weight decay": ("train", ["optimizer.weight_decay=lots", here], ["optimizer.weight_decay=lots"]),
        "train scale": ("train", ["augment.scale_min=2", here], ["augment.scale_min=2"]),
        "train image size": ("train", ["dataset.preprocess.image_size=0", here], ["dataset.preprocess.image_size=0"]),
        "train phase": ("train", ["strategy.phases.0.epochs=0", here], ["strategy.phases"]),
        "inspect texts": (
            "inspect",
            ["dataset=imagefolder", f"dataset.root={txt}", here],
            [f"no images found under {txt}"],
        ),
        "inspect bad value": ("inspect", ["samples_per_class=0", here], ["samples_per_class=0"]),
        "advise": ("advise", ["seed=-1"], ["seed=-1"]),
        "compare": ("compare", ["size_unit=banana", f"dir={written}"], ["size_unit=banana"]),
        "compare strategies": ("compare", ["strategies=[gradul]", f"dir={written}"], ["strategies=[gradul]"]),
        "evaluate": ("evaluate", [f"ckpt={ckpt}", "batch_size=0", f"out={written}"], ["batch_size=0"]),
        "evaluate root alone": (
            "evaluate",
            [f"ckpt={ckpt}", "dataset.root=/data/moved"],
            ["dataset=imagefolder dataset.root=/data/moved"],
        ),
        "predict top_k": (
            "predict",
            [f"ckpt={ckpt}", f"input={written}", "top_k=0", f"out={written}/predictions"],
            ["top_k=0"],
        ),
        "predict out": (
            "predict",
            [f"ckpt={ckpt}", f"input={written}", f"out={written}/metrics.json/p"],
            [f"{written}/metrics.json", "out="],
        ),
        "export format": ("export", [f"ckpt={ckpt}", "format=tflite"], ["format=tflite"]),
        "export out": (
            "export",
            [f"ckpt={ckpt}", f"out={written}/metrics.json/m.onnx"],
            [f"{written}/metrics.json", "out="],
        ),
    }


FAST = ["train bad values", "train unknown key", "inspect texts", "advise", "compare", "evaluate", "predict out"]
FAST += ["export out"]


@pytest.mark.parametrize("case", FAST)
def test_a_bad_command_line_is_one_message_and_writes_nothing(written, case):
    cli, args, named = cases(written)[case]
    before = digest(written)
    proc = run_cli(cli, *args)
    assert_refused(proc, *named)
    after = digest(written)
    assert {k: after.get(k) for k in before} == before
    if case != "inspect texts":  # a config error: refused before Hydra made its run folder (.hydra/, the log)
        assert after == before


ALL = ["train gpu", "train seed", "train weight decay", "train scale", "train image size", "train phase"]
ALL += ["inspect bad value", "compare strategies", "evaluate root alone", "predict top_k", "export format"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL)
def test_more_bad_command_lines(written, case):
    if case == "train gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli, args, named = cases(written)[case]
    before = digest(written)
    assert_refused(run_cli(cli, *args), *named)
    after = digest(written)
    assert {k: after.get(k) for k in before} == before


def test_the_lists_cover_every_case(tmp_path):
    assert sorted(FAST + ALL) == sorted(cases(tmp_path))
