"""The Python API (tlexp.fit, tlexp.load): the CLI's config, checks, records and messages, callable again in one
process, no sys.exit, no Hydra state left behind; the quickstart example and docs/api.md run as printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

import tlexp
from tlexp import export, train
from tlexp.config.errors import ConfigError, DataError, TlexpError
from tlexp.data.images import open_rgb
from tlexp.data.sources import synthetic
from tlexp.model.inference import load_trained

ROOT = Path(__file__).resolve().parents[1]


def tiny(weights: Path, cache: Path, **extra) -> dict:
    """Keyword arguments for a run of seconds: tiny ResNet, synthetic data, cached features."""
    return {
        "model": "test_resnet",
        "dataset": "synthetic",
        "strategy": "feature_extraction",
        "model.weights": weights,  # a Path: passed as a quoted string
        "strategy.phases.0.epochs": 2,
        "data.batch_size": 16,
        "data.num_workers": 0,
        "trainer.enable_progress_bar": False,
        "report.enabled": False,
        "report.train_batch_preview": 0,
        "cache.dir": str(cache),
        **extra,
    }


def no_hydra_left() -> bool:
    return not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


def test_import_is_light_and_lists_the_api():
    code = "import sys, tlexp; print(sorted(m for m in ('torch', 'lightning', 'hydra', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert {"fit", "load", "FitResult", "Model", "TlexpError", "ConfigError", "DataError"} <= set(tlexp.__all__)
    assert all(hasattr(tlexp, name) for name in tlexp.__all__)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_weights):
    """Two fits in this one process: keyword arguments into a named directory, then Hydra strings into the
    default timestamped directory (under a temporary working directory)."""
    base = tmp_path_factory.mktemp("api")
    first = tlexp.fit(**tiny(tiny_weights, base / "cache"), output_dir=base / "named run")  # a space: quoted
    assert no_hydra_left()
    strings = [f"{k}={v}" for k, v in tiny(tiny_weights, base / "cache", seed=7).items()]
    cwd = os.getcwd()
    os.chdir(base)
    try:
        second = tlexp.fit(*strings)
    finally:
        os.chdir(cwd)
    assert no_hydra_left()
    return {"first": first, "second": second, "base": base}


def test_fit_twice_in_one_process_leaves_the_runs_records(fitted):
    first, second, base = fitted["first"], fitted["second"], fitted["base"]
    assert first.run_dir == (base / "named run").absolute()
    assert json.loads((first.run_dir / "metrics.json").read_text()) == first.metrics
    assert first.metrics["strategy"] == "feature_extraction" and first.metrics["model"] == "test_resnet.r160_in1k"
    assert first.checkpoint.is_file() and first.checkpoint.parent == first.run_dir / "checkpoints"
    assert first.test_accuracy == first.metrics["test"]["acc"] and "test_accuracy=" in repr(first)
    # The default directory, as the command line makes it: outputs/<date>/<time>_<strategy>_<model>
    assert second.run_dir.parent.parent == base / "outputs"
    assert second.run_dir.name.endswith("_feature_extraction_test_resnet") and second.metrics["seed"] == 7
    assert (second.run_dir / "config.yaml").is_file() and not (second.run_dir / ".tlexp-claim").exists()


def test_errors_raise_the_command_lines_messages_without_exiting(fitted, tmp_path):
    for argv, kwargs in (
        (["data.batch_size=0"], {"data.batch_size": 0}),
        (["data.batchsize=3"], {"data.batchsize": 3}),  # a misspelt key: "did you mean data.batch_size?"
        (["model=resnet5"], {"model": "resnet5"}),
    ):
        with pytest.raises(TlexpError) as cli:
            train.start(argv)  # what `python -m tlexp.train` checks before Hydra (exit 2 with this message)
        with pytest.raises(TlexpError) as api:
            tlexp.fit(**kwargs)
        assert type(api.value) is type(cli.value) and str(api.value) == str(cli.value)
        assert no_hydra_left()
    assert "did you mean data.batch_size" in str(api.value) or "model" in str(api.value)
    with pytest.raises(DataError, match="does not exist"):
        tlexp.fit(dataset="imagefolder", **{"dataset.root": str(tmp_path / "no such folder")})
    with pytest.raises(ConfigError, match="already holds a finished run"):
        tlexp.fit(output_dir=fitted["first"].run_dir)
    with pytest.raises(ConfigError, match="one configuration"):
        tlexp.fit("strategy=feature_extraction,finetune")
    with pytest.raises(ConfigError, match="does not exist"):
        tlexp.load(tmp_path / "missing.ckpt")
    assert no_hydra_left()


def test_resuming_a_finished_run_reads_it_back(fitted):
    again = tlexp.fit(resume=str(fitted["first"].run_dir))
    assert again.metrics == fitted["first"].metrics and again.run_dir == fitted["first"].run_dir


def test_load_predicts_paths_pil_images_arrays_and_tensors_alike(fitted, tmp_path):
    run = fitted["first"]
    model = tlexp.load(run)
    assert model.classes == run.metrics["class_names"] and model.kind == "checkpoint"
    assert tlexp.load(run.run_dir).source == run.checkpoint  # a run directory: its best checkpoint
    pool = synthetic(num_classes=4, per_class=2, image_size=40, seed=3).splits["pool"]
    arrays = [pool.image(i).permute(1, 2, 0).numpy() for i in range(len(pool))]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    # By hand: the module on the model's own preprocessing.
    module = load_trained(run.checkpoint)
    transform = module.eval_preprocessing().eval_transform()
    with torch.no_grad():
        expected = module(torch.stack([transform(open_rgb(p)) for p in paths])).softmax(1).numpy()
    given = {
        "paths": paths,
        "strings": [str(p) for p in paths],
        "PIL images": [Image.fromarray(a) for a in arrays],
        "arrays": arrays,
        "float arrays": [a / 255.0 for a in arrays],
        "an N x H x W x C batch": np.stack(arrays),
        "tensors": [torch.from_numpy(a).permute(2, 0, 1) for a in arrays],
        "an N x C x H x W float batch": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255,
    }
    for what, images in given.items():
        probs = model.predict_proba(images, batch_size=3)  # batches of 3: a last batch of 2
        np.testing.assert_allclose(probs, expected, atol=1e-5, err_msg=what)
    assert model.predict_proba(paths[0]).shape == (1, 4)  # one image: a batch of one
    labels = model.predict(paths, unknown=False)
    assert labels == [model.classes[i] for i in expected.argmax(axis=1)]
    grey = np.stack(arrays)[..., 0]  # N x H x W grey
    assert model.predict_proba(grey).shape == (8, 4) and model.predict_proba(grey[0]).shape == (1, 4)
    maps = model.explain(paths[:3], target=model.classes[1])
    assert maps.shape == (3, 32, 32) and maps.max() == pytest.approx(1.0)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        model.predict([paths[0], tmp_path / "broken.png"])


def test_load_reads_exports_too(fitted, tmp_path):
    run = fitted["first"]
    out = tmp_path / "model.pt"
    export.export(load_trained(run.checkpoint), "torchscript", out, export.training_summary(run.checkpoint),
                  str(run.checkpoint))  # fmt: skip
    exported, original = tlexp.load(out), tlexp.load(run.checkpoint)
    images = [synthetic(4, 2, 32, seed=9).splits["pool"].image(i) for i in range(8)]
    np.testing.assert_allclose(exported.predict_proba(images), original.predict_proba(images), atol=1e-5)
    assert exported.kind == "pt" and original.unknown["score"] == "knn"  # an export gives logits: energy decides
    assert exported.unknown["threshold"] == original.unknown["by_score"]["energy"]["threshold"]
    with pytest.raises(ConfigError, match="explain needs a .ckpt"):
        exported.explain(images)


def _run_python(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TLEXP_CACHE_DIR": str(cwd / "feature_cache"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_quickstart_example_runs(tmp_path):
    proc = _run_python((ROOT / "examples" / "quickstart.py").read_text(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted ['class_0'" in proc.stdout and "Grad-CAM maps (2, 32, 32)" in proc.stdout
    assert list((tmp_path / "outputs").glob("*/*_feature_extraction_efficientnet_lite0/metrics.json"))


def test_the_api_page_runs_as_printed(tmp_path):
    """docs/api.md's python blocks, in order, in one session."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 5
    proc = _run_python("\n".join(blocks), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['class_0', 'class_1', 'class_2', 'class_3']" in proc.stdout
    assert "data.batch_size=0: must be an integer >= 1" in proc.stdout


def test_predict_explain_writes_an_overlay_per_image_beside_the_csv(fitted, tmp_path, capsys):
    """`python -m tlexp.predict ... explain=true`: <out>_gradcam/<index>_<name>.png, at the model's input size."""
    from tlexp import predict

    folder = tmp_path / "new"
    folder.mkdir()
    pool = synthetic(num_classes=4, per_class=1, image_size=40, seed=4).splits["pool"]
    for i in range(len(pool)):
        Image.fromarray(pool.image(i).permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"")
    ckpt = fitted["first"].checkpoint
    predict.main([f"ckpt={ckpt}", f"input={folder}", f"out={tmp_path / 'labels'}", "explain=true", "progress=false"])
    assert "explained 4 Grad-CAM overlays" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "labels_gradcam").iterdir())
    assert written == ["00001_img0.png", "00002_img1.png", "00003_img2.png", "00004_img3.png"]  # broken.png: 0
    with Image.open(tmp_path / "labels_gradcam" / written[0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    assert (tmp_path / "labels.csv").is_file()
    out = tmp_path / "model.pt"
    export.export(load_trained(ckpt), "torchscript", out)
    with pytest.raises(ConfigError, match="explain=true needs a .ckpt"):
        predict.run(predict.parse_args([f"ckpt={out}", f"input={folder}", "explain=true"], "predict", ""))
