"""tlexp as a user installs it: a wheel that carries the configs, run from outside the checkout; the export extra."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tlexp import export, predict
from tlexp.config.errors import ConfigError

from .conftest import short_phases

ROOT = Path(__file__).resolve().parents[1]
# Not copied into the build: a stale build/ would leak deleted modules into the wheel, the rest is big or local.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "outputs", "multirun", "lightning_logs")
INSTALL_HINT = 'pip install "tlexp[export]"'


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel . --no-deps` builds, from a copy of the checkout (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    pip = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(tmp / "dist")]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    (found,) = (tmp / "dist").glob("tlexp-*.whl")
    return found


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv's python with the wheel's tlexp; its dependencies are this venv's, tlexp's checkout is not."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    # Directories named in a .pth are not scanned for .pth files, so the editable install's path to the
    # checkout (a .pth in this venv's site-packages) does not come along: only the wheel provides tlexp.
    deps = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    # --target: pip neither sees nor touches the tlexp installed in this venv.
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=300)
    return python


def _run(python: Path, *args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `python args` as a user would: no PYTHONPATH into a checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_the_wheel_holds_every_config_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"tlexp/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    modules = {f"tlexp/{p.relative_to(ROOT / 'src' / 'tlexp').as_posix()}" for p in (ROOT / "src/tlexp").rglob("*.py")}
    assert {"tlexp/conf/train.yaml", "tlexp/conf/model/efficientnet_lite0.yaml"} <= configs
    assert "tlexp/conf/hydra/launcher/slurm.yaml" in configs and "tlexp/conf/__init__.py" in names  # pkg://tlexp.conf
    assert sorted(configs - names) == [] and sorted(modules - names) == []


def test_the_installed_wheel_composes_its_configs_outside_the_checkout(venv_python, tmp_path):
    where = _run(venv_python, "-c", "import tlexp.conf; print(tlexp.__file__); print(tlexp.conf.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(Path(line).is_relative_to(venv_python.parent.parent) for line in where.stdout.split()), where.stdout
    job = _run(venv_python, "-m", "tlexp.train", "--cfg", "job", "model=test_resnet", "strategy=finetune", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: test_resnet.r160_in1k" in job.stdout and "name: finetune" in job.stdout
    # evaluate / predict / export compose through tlexp.config.cli: a missing argument, not a missing config.
    usage = _run(venv_python, "-m", "tlexp.predict", "top_k=2", cwd=tmp_path)
    assert usage.returncode == 2 and "missing ckpt=..., input=..." in usage.stderr, usage.stderr[-2000:]
    # advise and strategy=auto read strategy YAMLs themselves (tlexp.auto), not through Hydra.
    advice = _run(venv_python, "-m", "tlexp.advise", "dataset=synthetic", "strategy.budget=0", cwd=tmp_path)
    assert advice.returncode == 0 and "strategy=feature_extraction" in advice.stdout, advice.stderr[-2000:]


def test_the_installed_wheel_trains(venv_python, tmp_path, tiny_weights):
    run_dir = tmp_path / "run"
    proc = _run(
        venv_python,
        "-m",
        "tlexp.train",
        "model=test_resnet",
        f"model.weights={tiny_weights}",
        "strategy=finetune",
        short_phases("finetune", epochs=1),
        "dataset=synthetic",
        "dataset.images_per_class=8",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "report.enabled=false",
        "report.train_batch_preview=0",
        f"hydra.run.dir={run_dir}",
        f"cache.dir={tmp_path / 'feature_cache'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["strategy"] == "finetune" and "acc" in metrics["test"]


def _fake_onnx(tmp_path: Path) -> Path:
    """A .onnx file with its sidecar card: enough to get as far as opening it."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: onnxruntime is missing")
    card = {"input_name": "images", "class_names": ["a", "b"], "preprocessing": {}}
    (tmp_path / "model.onnx.json").write_text(json.dumps(card))
    return model


def test_predict_on_onnx_without_onnxruntime_says_which_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # a None entry makes `import onnxruntime` fail
    with pytest.raises(SystemExit) as stop:
        predict.main([f"ckpt={_fake_onnx(tmp_path)}", f"input={tmp_path}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "onnxruntime is not installed" in err and INSTALL_HINT in err


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_export_without_the_extra_stops_before_writing(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    out = tmp_path / "export" / "model.onnx"
    with pytest.raises(ConfigError, match=rf"^{missing} is not installed.*{re.escape(INSTALL_HINT)}"):
        export.export(None, "onnx", out)  # fails before it touches the module
    assert not out.parent.exists()
