"""Every bad config value is one ConfigError naming the key, before any weights or data are loaded."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tlexp.config import validate
from tlexp.config.errors import ConfigError, DataError, WeightsUnavailable
from tlexp.config.validate import check_writable, rule, rules, user_keys, validate_config
from tlexp.inspect import check_has_images, stop_if_training_would
from tlexp.model import weights

CONF = Path(__file__).resolve().parents[1] / "conf"

# Each CLI's config, and the group choices that add keys (csv's manifest, ddp's num_nodes, auto's thresholds).
CONTEXTS = {
    "train": ("train", []),
    "train csv": ("train", ["dataset=csv"]),
    "train imagefolder": ("train", ["dataset=imagefolder"]),
    "train synthetic": ("train", ["dataset=synthetic"]),
    "train ddp": ("train", ["trainer=ddp"]),
    "train auto": ("train", ["strategy=auto"]),
    # a dataset config declares image_size and crop_pct; the other preprocess keys are added with `+`
    "train +preprocess": (
        "train",
        [
            "+dataset.preprocess.mean=[0.5,0.5,0.5]",
            "+dataset.preprocess.std=[0.5,0.5,0.5]",
            "+dataset.preprocess.interpolation=bicubic",
        ],
    ),
    "inspect": ("inspect", []),
    "advise": ("advise", []),
    "compare": ("compare", []),
    "audit": ("audit", []),
    "plan": ("plan", []),
    "evaluate": ("evaluate", ["ckpt=run/checkpoints/last.ckpt", "dataset=imagefolder"]),
    "predict": ("predict", ["ckpt=model.onnx", "input=photos"]),
    "export": ("export", ["ckpt=run/checkpoints/last.ckpt"]),
}

# Leaf keys deliberately not in the table; empty today: add a key here only with the reason why.
EXEMPT: dict[str, str] = {}


def compose_named(config_name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture(scope="module")
def composed() -> dict:
    return {name: compose_named(config, *overrides) for name, (config, overrides) in CONTEXTS.items()}


def _context(composed: dict, key: str) -> str:
    return next(name for name, cfg in composed.items() if key in user_keys(cfg))


def _override(value) -> str:
    return validate._show(value)


@pytest.mark.parametrize("key", sorted(rules()))
def test_every_bad_value_of_every_key_is_a_config_error_naming_it(composed, key):
    r = rule(key)
    assert r.bad, f"{key}: its rule lists no bad values to try"
    assert r.ok(r.example), f"{key}: the example in its messages, {r.example!r}, is itself refused"
    name = _context(composed, key)
    base = composed[name]
    validate_config(base, cuda_available=True)
    for bad in r.bad:
        cfg = copy.deepcopy(base)
        OmegaConf.update(cfg, key, bad)
        with pytest.raises(ConfigError) as err:
            validate_config(cfg, cuda_available=True)
        assert f"{key}=" in str(err.value), (bad, str(err.value))
    # and once through Hydra's own override parsing, as on a command line
    config, overrides = CONTEXTS[name]
    with pytest.raises(ConfigError, match=rf"(^|\s){key}="):
        validate_config(compose_named(config, *overrides, f"{key}={_override(r.bad[0])}"), cuda_available=True)


def test_every_leaf_key_of_every_cli_config_is_in_the_table(composed):
    missing = {k for cfg in composed.values() for k in user_keys(cfg) if k not in rules() and k not in EXEMPT}
    assert not missing, f"keys with no validation rule (add them to validate._rules, or to EXEMPT with why): {missing}"
    unused = {k for k in rules() if not any(k in user_keys(cfg) for cfg in composed.values())}
    assert not unused, f"rules for keys no config holds: {unused}"


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [""] + [f"{g}={c}" for g in ("model", "strategy", "dataset", "trainer") for c in _choices(g)]
)
def test_the_default_config_and_every_group_choice_validate(override):
    validate_config(compose_named("train", *([override] if override else [])), cuda_available=True)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.preprocess.image_size=0", "dataset.preprocess.image_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.precision=banana", "trainer.precision"),
        ("seed=abc", "seed"),
        ("optimizer.weight_decay=lots", "optimizer.weight_decay"),
        ("augment.scale_min=2", "augment.scale_min"),
        ("data.num_workers=-1", "data.num_workers"),
        ("trainer.devices=0", "trainer.devices"),
    ],
)
def test_the_issue_examples_name_key_value_allowed_and_fix(override, key):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_named("train", override), cuda_available=True)
    text = str(err.value)
    assert text.startswith(f"{override}: must be ") and f"(e.g. {key}=" in text


def test_the_message_reads_as_documented():
    with pytest.raises(ConfigError) as err:
        validate_config(compose_named("train", "data.batch_size=0"))
    assert str(err.value) == "data.batch_size=0: must be an integer >= 1 (e.g. data.batch_size=32)"


def test_all_problems_are_reported_in_one_message():
    bad = ["seed=abc", "data.batch_size=0", "augment.scale_min=2", "cache.mode=sometimes", "strategy.phases.0.epochs=0"]
    with pytest.raises(ConfigError) as err:
        validate_config(compose_named("train", *bad))
    text = str(err.value)
    assert text.startswith("5 config values are not valid:")
    for key in ("seed=abc", "data.batch_size=0", "augment.scale_min=2", "cache.mode=sometimes", "strategy.phases"):
        assert key in text


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_says_so(monkeypatch, accelerator):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"trainer.accelerator={accelerator}: no CUDA GPU .* trainer=cpu"):
        validate_config(compose_named("train", f"trainer.accelerator={accelerator}"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate_config(compose_named("train", f"trainer.accelerator={accelerator}"))


@pytest.mark.parametrize(
    "override",
    [
        "strategy.phases.0.epochs=0",
        "strategy.phases.0.epochs=abc",
        "strategy.phases.1.lr=-1",
        "+strategy.phases.0.bn=banana",
        "+strategy.phases.2.schedule=banana",
        "strategy.phases.0.train=[heda]",
        "strategy.phases.0.train=[]",
        "+strategy.phases.0.weight_decay=-1",
        "strategy.phases=[]",
    ],
)
def test_bad_phase_values_name_the_phase_list(override):
    with pytest.raises(ConfigError, match=r"strategy\.phases"):
        validate_config(compose_named("train", "strategy=gradual", override))


def test_auto_thresholds_must_be_ordered():
    with pytest.raises(ConfigError, match="feature_extraction_below=3000 > strategy.finetune_above=2000"):
        validate_config(compose_named("train", "strategy=auto", "strategy.feature_extraction_below=3000"))


def test_documented_plain_preprocess_overrides_compose_for_every_dataset():
    for dataset in _choices("dataset"):
        cfg = compose_named(
            "train", f"dataset={dataset}", "dataset.preprocess.image_size=64", "preprocess.crop_pct=1.0"
        )
        assert cfg.dataset.preprocess.image_size == 64 and cfg.preprocess.crop_pct == 1.0
        validate_config(cfg)


# ---------------------------------------------------------------- output folders


def test_check_writable_refuses_a_folder_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file, not a folder\. Pass out="):
        check_writable(tmp_path / "file" / "sub", "Pass out=...")


def test_check_writable_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(ConfigError, match=rf"cannot write to {tmp_path} \(No space left on device\)\. Pass out="):
        check_writable(tmp_path / "not" / "yet", "Pass out=...")
    assert not list(tmp_path.iterdir())  # the probe file is gone, no folder was made


def test_check_writable_refuses_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 1024))
    with pytest.raises(ConfigError, match=rf"{tmp_path} is full: 0.0 MB free"):
        check_writable(tmp_path, "Pass out=...")
    monkeypatch.undo()
    check_writable(tmp_path, "Pass out=...")


def test_read_only_mount_is_refused():
    if os.access("/proc", os.W_OK) and not Path("/proc").is_mount():
        pytest.skip("no read-only folder here")
    with pytest.raises(ConfigError, match="cannot write to /proc"):
        check_writable("/proc", "fix it")


def _cli_cfg(config_name: str, **values):
    cfg = compose_named(config_name, *(f"{k}={v}" for k, v in values.items() if k not in ("ckpt", "input", "out")))
    for k in ("ckpt", "input", "out"):
        if k in values:
            cfg[k] = values[k]
    return cfg


def test_predict_checks_its_output_before_it_loads_the_model(tmp_path):
    from tlexp import predict

    (tmp_path / "file").write_text("x")
    cfg = _cli_cfg("predict", ckpt=str(tmp_path / "missing.ckpt"), input=str(tmp_path), out=str(tmp_path / "file/p"))
    with pytest.raises(ConfigError, match="not a folder. Pass out="):
        predict.run(cfg)


def test_export_checks_its_output_before_it_loads_the_model(tmp_path):
    from tlexp import export

    (tmp_path / "file").write_text("x")
    cfg = _cli_cfg("export", ckpt=str(tmp_path / "missing.ckpt"), out=str(tmp_path / "file/m.onnx"))
    with pytest.raises(ConfigError, match="not a folder. Pass out="):
        export.run(cfg)


# ---------------------------------------------------------------- weights files and image folders


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_garbage_weights_file_is_named_without_torchs_advice(tmp_path, suffix):
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsUnavailable) as err:
        weights.load_file(torch.nn.Linear(2, 2), "resnet18", str(garbage))
    text = str(err.value)
    assert f"{garbage} is not a valid PyTorch or safetensors weights file" in text
    assert "model.weights=" in text  # how to supply weights
    assert "weights_only" not in text and "issue" not in text


def test_inspect_on_a_folder_without_images_names_the_folder(tmp_path):
    for name in ("a/x.txt", "b/y.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("hi")
    dataset = compose_named("inspect", "dataset=imagefolder", f"dataset.root={tmp_path}").dataset
    with pytest.raises(DataError, match=rf"no images found under {tmp_path} .*a/x.txt.*one subfolder per class"):
        check_has_images(dataset)
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    check_has_images(dataset)


def test_inspect_fails_when_its_report_lists_a_problem_that_stops_training():
    cfg = compose_named("inspect", "output_dir=/tmp/somewhere")
    stop_if_training_would({"problems": [], "bad_files": [{"path": "x.jpg"}]}, cfg)  # skipped: training goes on
    with pytest.raises(DataError, match="1 problem.*class folder"):
        stop_if_training_would({"problems": ["class folder(s) ['empty'] hold no images"], "bad_files": []}, cfg)
    cfg.data.on_bad_image = "error"
    with pytest.raises(DataError, match="unreadable file"):
        stop_if_training_would({"problems": [], "bad_files": [{"path": "x.jpg"}]}, cfg)


# Literal values at the edges, written here and not taken from the table: a rule loosened by mistake fails these.
REFUSED = [
    "model.head_dropout=1.0",  # drops every feature: the head would learn nothing
    "model.head_dropout=-0.1",
    "augment.hflip=1.5",
    "augment.scale_min=0",
    "optimizer.label_smoothing=1.0",
    "epoch_scale=0",
    "ema=1.5",
    "data.batch_size=0",
    "seed=-1",
    "optimize_metric=test.acc",
    "optimize_metric=best_val_accuracy",
    "freeze_mode=sometimes",
    "cache.mode=maybe",
    "resume_from=first",
    "data.on_bad_image=ignore",
    "data.balance=oversample",
    "strategy.probe_views=-1",
]
ACCEPTED = ["model.head_dropout=0.0", "model.head_dropout=0.9", "augment.hflip=1.0", "epoch_scale=0.01", "ema=0.0"]


@pytest.mark.parametrize("override", REFUSED)
def test_literal_bad_values_at_the_edges_are_refused(override):
    overrides = ["strategy=lp_ft", override] if override.startswith("strategy.") else [override]
    with pytest.raises(ConfigError, match=f"^{override.split('=')[0]}="):
        validate_config(compose_named("train", *overrides), cuda_available=True)


@pytest.mark.parametrize("override", ACCEPTED)
def test_literal_good_values_at_the_edges_are_accepted(override):
    validate_config(compose_named("train", override), cuda_available=True)
