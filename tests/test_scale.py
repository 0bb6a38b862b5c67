"""Scaling options: precision auto, channels_last, compile, device-side batch augmentation, launchers, Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from tlexp.config.errors import ConfigError
from tlexp.data.batch_augment import BatchAugment
from tlexp.data.datamodule import auto_workers
from tlexp.data.transforms import eval_transform
from tlexp.model.preprocessing import Preprocessing
from tlexp.run.accel import gpus_on_node, prepare_backbone, processes_per_run, resolve_channels_last, resolve_precision
from tlexp.run.build import build_datamodule, check_config
from tlexp.train import objective, train

from .conftest import CONF, TINY, compose_cfg

ROOT = CONF.parent


def test_precision_auto_picks_bf16_then_fp16_on_gpu_and_fp32_on_cpu():
    assert resolve_precision("auto", "gpu", cuda_available=True, bf16_supported=True) == "bf16-mixed"
    assert resolve_precision("auto", "gpu", cuda_available=True, bf16_supported=False) == "16-mixed"
    assert resolve_precision("auto", "gpu", cuda_available=False) == "32-true"
    assert resolve_precision("auto", "cpu", cuda_available=True) == "32-true"
    assert resolve_precision("16-mixed", "gpu", cuda_available=False) == "16-mixed"  # explicit values pass through


def test_trainer_configs_compose():
    gpu, ddp = compose_cfg("trainer=gpu").trainer, compose_cfg("trainer=ddp").trainer
    assert (gpu.accelerator, gpu.precision, gpu.benchmark) == ("gpu", "auto", True)
    assert (ddp.strategy, ddp.devices, ddp.num_nodes, ddp.precision) == ("ddp", -1, 1, "auto")


def test_loader_workers_auto_keeps_cpu_cores_for_the_model(tmp_path):
    # CPU: images in memory are transformed in the main process, files get one decoding worker; GPU: up to 8.
    assert auto_workers(in_memory=True, gpus=0, cpus=2) == 0
    assert auto_workers(in_memory=False, gpus=0, cpus=64) == 1
    assert auto_workers(in_memory=True, gpus=1, cpus=2) == 1 and auto_workers(True, gpus=1, cpus=64) == 8
    assert auto_workers(True, gpus=8, cpus=32) == 3  # 8 training processes share the node's 32 cores
    assert gpus_on_node("cpu", 1, cuda_available=True) == 0 and gpus_on_node("gpu", 1, cuda_available=False) == 0
    assert gpus_on_node("gpu", 1, cuda_available=True) == 1 and gpus_on_node("gpu", [0, 2], cuda_available=True) == 2
    assert gpus_on_node("gpu", "0,1,3", cuda_available=True) == 3
    assert processes_per_run({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}) == 2
    assert processes_per_run({"accelerator": "cpu", "devices": "auto"}) == 1
    assert processes_per_run({"accelerator": "gpu", "devices": -1, "num_nodes": 2}, cuda_available=False) == 2
    assert processes_per_run({"accelerator": "gpu", "devices": [0, 1], "num_nodes": 2}, cuda_available=True) == 4
    assert gpus_on_node("gpu", compose_cfg("trainer=gpu", "trainer.devices=[0,1]").trainer.devices, True) == 2
    pre = Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    cfg = compose_cfg("dataset=synthetic")
    assert cfg.data.num_workers == "auto" and build_datamodule(cfg, pre).num_workers == 0
    for name in ("red", "blue"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), name).save(tmp_path / name / f"{i}.png")
    files = compose_cfg("dataset=imagefolder", f"dataset.root={tmp_path}", "data.preflight_cache=null")
    assert build_datamodule(files, pre).num_workers == 1
    assert build_datamodule(compose_cfg("data.num_workers=3"), pre).num_workers == 3
    with pytest.raises(ConfigError, match="num_workers must be auto or a count"):
        build_datamodule(compose_cfg("data.num_workers=many"), pre)


def test_channels_last_auto_is_on_for_cnns_on_gpu_only():
    cnn, vit = timm.create_model(TINY, num_classes=0), timm.create_model("test_vit", num_classes=0)
    assert resolve_channels_last("auto", "gpu", cnn, cuda_available=True)
    assert not resolve_channels_last("auto", "gpu", vit, cuda_available=True)
    assert not resolve_channels_last("auto", "cpu", cnn, cuda_available=True)
    with pytest.raises(ConfigError, match="channels_last"):
        resolve_channels_last("yes", "gpu", cnn)


def test_channels_last_converts_weights_and_inputs():
    backbone = timm.create_model(TINY, num_classes=0)
    seen = []
    first_conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    prepare_backbone(backbone, channels_last=True, compile=False)
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    backbone.eval()(torch.randn(2, 3, 32, 32))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_compile_keeps_state_dict_keys():
    backbone = timm.create_model(TINY, num_classes=0)
    keys = list(backbone.state_dict())
    prepare_backbone(backbone, channels_last=False, compile=True)
    assert backbone._compiled_call_impl is not None  # compiled lazily, at the first forward
    assert list(backbone.state_dict()) == keys  # checkpoints still load into an uncompiled model


def test_batch_augment_draws_per_image_and_matches_cpu_eval():
    torch.manual_seed(0)
    aug = BatchAugment([0.5] * 3, [0.5] * 3, {"hflip": 0.5, "rotation": 0, "color_jitter": 0})
    x = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    x[..., :4] = 255  # left half white: a flipped image has its white half on the right
    out = aug(x, train=True)
    flipped = out[:, 0, 0, -1] > 0
    assert out.dtype == torch.float32 and 0 < flipped.sum() < 64  # some images flipped, not all
    jitter = BatchAugment([0.5] * 3, [0.5] * 3, {"hflip": 0, "rotation": 10, "color_jitter": 0.4})
    varied = jitter(torch.full((8, 3, 16, 16), 128, dtype=torch.uint8), train=True)
    assert varied.amin() >= -1 and varied.amax() <= 1
    assert len({round(v, 4) for v in varied[:, 0, 8, 8].tolist()}) > 1  # brightness differs image to image
    # Eval: the device path (uint8 loader + normalise after transfer) gives what the CPU transform gives.
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    cpu = eval_transform(16, [0.5] * 3, [0.2] * 3, "bilinear", 1.0)(img)
    crop = eval_transform(16, None, None, "bilinear", 1.0, on_device=True)(img)
    dev = BatchAugment([0.5] * 3, [0.2] * 3)(crop[None], train=False)
    assert torch.allclose(cpu, dev[0], atol=1e-5)


def test_device_augmentation_trains_and_sweep_objective_is_val_acc(tiny_cfg):
    cfg = tiny_cfg("strategy=finetune", "strategy.phases.0.epochs=1", "data.augment_on=device")
    metrics = train(cfg)
    assert metrics["precision"] == "32-true" and metrics["channels_last"] is False
    assert objective(cfg, metrics) == metrics["best_val_acc"]
    cfg.optimize_metric = "test.acc"
    with pytest.raises(ConfigError, match="never selects on the test set"):
        check_config(cfg)
    cfg.data.augment_on = "gpu"
    cfg.optimize_metric = "best_val_acc"
    with pytest.raises(ConfigError, match="augment_on"):
        train(cfg)


def _hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_launcher_and_optuna_configs_compose():
    slurm = _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.gpus_per_node == 1
    assert _hydra_cfg("hydra/launcher=local").hydra.launcher._target_.endswith("JoblibLauncher")

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = _hydra_cfg("hparams_search=gradual_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimize_metric == "best_val_acc" and cfg.strategy.name == "gradual"
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    dists = {o.get_key_element(): create_optuna_distribution_from_override(o) for o in parsed}
    assert type(dists["strategy.phases.0.lr"]).__name__ == "LogUniformDistribution"
    assert type(dists["strategy.phases.2.epochs"]).__name__ == "IntUniformDistribution"
    for key in dists:  # every tuned key exists in the composed config
        assert OmegaConf.select(cfg, key) is not None, key


def _multirun(tmp_path: Path, tiny_weights: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "tlexp.train",
        "-m",
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "dataset=synthetic",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_joblib_launcher_runs_two_jobs(tmp_path, tiny_weights):
    run = _multirun(
        tmp_path,
        tiny_weights,
        "hydra/launcher=local",
        "strategy=finetune",
        "strategy.phases.0.epochs=1",
        "seed=1,2",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted(tmp_path.glob("*/metrics.json"))
    assert len(results) == 2, run.stdout[-2000:]
    assert sorted(json.loads(p.read_text())["seed"] for p in results) == [1, 2]


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path, tiny_weights):
    run = _multirun(
        tmp_path,
        tiny_weights,
        "hparams_search=gradual_optuna",
        "hydra.sweeper.n_trials=2",
        "epoch_scale=0.1",  # 2..12 epochs a phase -> 1
    )
    assert run.returncode == 0, run.stderr[-3000:]
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    vals = [json.loads(p.read_text())["best_val_acc"] for p in tmp_path.glob("*/metrics.json")]
    assert len(vals) == 2 and best.best_value == pytest.approx(max(vals))


@pytest.mark.slow
def test_a_failed_optuna_trial_is_recorded_and_the_study_goes_on(tmp_path, tiny_weights):
    # epochs=0 is refused by tlexp's config check: those trials fail, leave error.json, and return None.
    run = _multirun(
        tmp_path,
        tiny_weights,
        "hparams_search=gradual_optuna",
        "hydra.sweeper.n_trials=4",
        "strategy.phases.0.epochs=choice(0,1)",
        "epoch_scale=0.1",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    failed = list(tmp_path.glob("*/error.json"))
    done = [json.loads(p.read_text())["best_val_acc"] for p in tmp_path.glob("*/metrics.json")]
    assert failed and done and len(failed) + len(done) == 4, run.stdout[-2000:]
    assert "epochs must be a whole number >= 1" in failed[0].read_text()
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(done)) and best.best_params["strategy.phases.0.epochs"] == 1


def test_threads_auto_leaves_the_busy_cores_to_the_other_jobs(monkeypatch):
    from tlexp.run import accel

    monkeypatch.setattr(accel, "STARTING_THREADS", 8)
    assert accel.resolve_threads("auto", "cpu", cores=8, busy=0) == 8
    assert accel.resolve_threads("auto", "cpu", cores=8, busy=3) == 5
    assert accel.resolve_threads("auto", "cpu", cores=2, busy=5) == 1  # never 0
    monkeypatch.setattr(accel, "STARTING_THREADS", 2)  # OMP_NUM_THREADS=2 or a launcher's cap: never more
    assert accel.resolve_threads("auto", "cpu", cores=8, busy=0) == 2
    assert accel.resolve_threads(3, "cpu", cores=8, busy=7) == 3  # a number is taken as given
    monkeypatch.setattr(accel, "on_gpu", lambda accelerator: accelerator == "gpu")
    assert accel.resolve_threads("auto", "gpu", cores=8, busy=0) is None  # torch's default on a GPU machine


def test_threads_setting_is_applied_to_the_run(tiny_cfg):
    before = torch.get_num_threads()
    try:
        train(tiny_cfg("strategy=feature_extraction", "threads=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
