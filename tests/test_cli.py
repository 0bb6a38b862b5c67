"""The command line as a user meets it: a multirun sweep of the four strategies, and wrong names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlexp.train", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_multirun_sweeps_the_four_strategies(tmp_path, tiny_weights):
    proc = run_cli(
        "-m",
        "strategy=scratch,feature_extraction,finetune,gradual",
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "dataset.images_per_class=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "trainer.limit_train_batches=1",
        f"hydra.sweep.dir={tmp_path}",
        f"cache.dir={tmp_path / 'feature_cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [r.name for r in runs] == [
        "0_scratch_test_resnet",
        "1_feature_extraction_test_resnet",
        "2_finetune_test_resnet",
        "3_gradual_test_resnet",
    ]
    for run, strategy in zip(runs, ["scratch", "feature_extraction", "finetune", "gradual"], strict=True):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["strategy"] == strategy and "acc" in metrics["test"]
        assert (run / ".hydra" / "config.yaml").is_file()
        assert (run / "evaluation" / "summary.json").is_file() and (run / "train_batch.png").is_file()


@pytest.mark.parametrize(
    ("override", "listed"),
    [
        ("strategy=nope", "Available options in 'strategy'"),
        ("model=resnet5", "Available options in 'model'"),
        ("dataset=mnist", "Available options in 'dataset'"),
    ],
)
def test_unknown_group_choice_lists_the_valid_ones(override, listed):
    proc = run_cli(override, timeout=60)
    assert proc.returncode != 0 and listed in proc.stderr


def test_unknown_timm_name_is_one_clear_line(tmp_path):
    proc = run_cli("model.name=resnet_fifty", f"hydra.run.dir={tmp_path}", timeout=60)
    assert proc.returncode == 2
    assert "tlexp error: unknown backbone 'resnet_fifty'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_image_folder_is_one_clear_line(tmp_path):
    proc = run_cli("dataset=imagefolder", f"dataset.root={tmp_path}/nope", f"hydra.run.dir={tmp_path}/run", timeout=60)
    assert proc.returncode == 2
    assert f"tlexp error: image folder {tmp_path}/nope does not exist" in proc.stderr


@pytest.mark.parametrize("finished", [True, False])
def test_a_new_run_into_a_dir_holding_a_run_is_refused_and_the_run_kept(tmp_path, finished):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    files = {run / "config.yaml": "seed: 3\n", run / "checkpoints" / "last.ckpt": "weights"}
    if finished:
        files[run / "metrics.json"] = "{}"
    for path, text in files.items():
        path.write_text(text)
    proc = run_cli(f"hydra.run.dir={run}", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    state = "a finished run" if finished else "an interrupted run"
    assert f"tlexp error: {run} already holds {state}" in proc.stderr and f"resume={run}" in proc.stderr
    assert all(path.read_text() == text for path, text in files.items())
    assert sorted(p.name for p in run.iterdir()) == sorted({p.relative_to(run).parts[0] for p in files})
