"""Real-world image folders: odd modes, bad files, duplicates, imbalance, structural errors, inspect."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import DataLoader, WeightedRandomSampler

from tlexp.config.errors import DataError
from tlexp.data import TransferDataModule
from tlexp.data import preflight as preflight_mod
from tlexp.data.images import BadImage, ImageFiles, TransformedImages, open_rgb
from tlexp.data.preflight import preflight
from tlexp.inspect import inspect
from tlexp.train import train

from .conftest import CONF

ROOT = Path(__file__).resolve().parents[1]


def noise(path: Path, size=(24, 16), mode="RGB", fmt=None, **save) -> Path:
    """A distinct image (noise seeded by its path): no accidental duplicates."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path, fmt, **save)
    return path


def odd_files(folder: Path) -> dict[str, Path]:
    """One file of each kind users' folders hold; returns kind -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    files = {
        "rgba": noise(folder / "alpha.png", mode="RGBA"),
        "la": noise(folder / "grey_alpha.PNG", mode="LA"),
        "p": noise(folder / "palette.png", mode="P", transparency=0),
        "cmyk": noise(folder / "print.jpg", mode="CMYK"),
        "one_bit": noise(folder / "scan.bmp", mode="1"),
        "truncated": folder / "cut.jpg",
        "zero": folder / "zero.jpeg",
        "text": folder / "readme.jpg",
    }
    grey16 = Image.fromarray(np.full((16, 24), 32768, np.uint16))
    grey16.save(files.setdefault("grey16", folder / "depth16.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    files["exif"] = noise(folder / "phone.JPG", size=(40, 20), exif=exif)
    files["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])  # header intact, data cut
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a photo")
    return files


def messy_folder(root: Path) -> Path:
    """Pre-split train/ test/ with odd modes, three bad files, stray files, an empty class and a leak."""
    for i in range(6):
        noise(root / "train" / "cat" / f"c{i}.jpg")
        noise(root / "train" / "dog" / f"d{i}.jpg")
    for i in range(2):
        noise(root / "test" / "cat" / f"tc{i}.jpg")
        noise(root / "test" / "dog" / f"td{i}.jpg")
    odd_files(root / "train" / "cat")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "dog" / "notes.txt").write_text("dogs")
    shutil.copy(root / "train" / "dog" / "d0.jpg", root / "test" / "dog" / "same_as_d0.jpg")
    (root / "train" / "empty").mkdir()
    (root / "test" / "empty").mkdir()
    return root


BAD = {"cut.jpg": "truncated", "zero.jpeg": "empty file", "readme.jpg": "not an image"}


def _dm(cfg: dict, **options) -> TransferDataModule:
    options.setdefault("preflight_cache", None)
    dm = TransferDataModule(cfg, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, **options)
    dm.setup()
    return dm


# ---------------------------------------------------------------- decoding


def test_every_mode_decodes_to_rgb_with_exif_and_background(tmp_path):
    files = odd_files(tmp_path)
    for kind in ("rgba", "la", "p", "cmyk", "one_bit", "grey16", "exif"):
        img = open_rgb(files[kind])
        assert img.mode == "RGB", kind
        assert img.size == ((20, 40) if kind == "exif" else (24, 16)), kind  # EXIF orientation applied
    # 16-bit mid grey stays mid grey (a plain convert("RGB") clips it to white)
    assert 120 <= open_rgb(files["grey16"]).getpixel((0, 0))[0] <= 136
    # fully transparent pixels land on the background colour
    clear = Image.new("RGBA", (4, 4), (200, 10, 10, 0))
    clear.save(tmp_path / "clear.png")
    assert open_rgb(tmp_path / "clear.png", background=(0, 128, 255)).getpixel((1, 1)) == (0, 128, 255)
    for kind, why in (("truncated", "truncated"), ("zero", "empty file"), ("text", "not an image")):
        with pytest.raises(BadImage, match=why):
            open_rgb(files[kind])


def test_fuzz_random_bytes_never_crash_the_loader(tmp_path):
    rng = np.random.default_rng(0)
    headers = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0"]
    paths = []
    for i in range(60):
        path = tmp_path / f"f{i}.{['jpg', 'png', 'gif', 'bmp', 'webp', 'tif'][i % 6]}"
        if i % 4 == 0:
            noise(path)  # readable ones between the garbage
        else:
            path.write_bytes(headers[i % len(headers)] + rng.bytes(int(rng.integers(0, 3000))))
        paths.append(str(path))
    found = preflight(paths, workers=2)
    assert all(found[p].reason is None for p in paths[::4])
    failures = tmp_path / "broken.tsv"
    data = TransformedImages(ImageFiles(paths, np.zeros(len(paths))), lambda im: torch.zeros(1), failures)
    batches = list(DataLoader(data, batch_size=8))
    assert sum(len(y) for _, y in batches) == len(paths)
    broken = failures.read_text().splitlines()
    assert {line.split("\t")[0] for line in broken} == {p for p in paths if found[p].reason}


# ---------------------------------------------------------------- inspect, training with skip and error


def _inspect_cfg(root: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="inspect",
            overrides=[
                "model=test_resnet",
                "dataset=imagefolder",
                f"dataset.root={root}",
                "preprocess.image_size=32",
                "samples_per_class=3",
                "data.preflight_cache=null",
                f"output_dir={out}",
                *extra,
            ],
        )


def test_inspect_reports_every_problem_of_a_messy_folder(tmp_path, capsys):
    root = messy_folder(tmp_path / "photos")
    report = inspect(_inspect_cfg(root, tmp_path / "report"))
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == set(BAD) and all(why in bad[name] for name, why in BAD.items())
    assert {"RGBA", "LA", "P", "CMYK", "I;16", "1", "RGB"} <= set(report["modes"])
    assert report["ignored_files"] == {"hidden": 1, "not an image": 1}
    assert any("['empty']" in p and "hold no images" in p for p in report["problems"])
    [group] = report["duplicates"]
    assert sorted(f["split"] for f in group["files"]) == ["test", "train"]
    assert [Path(x["path"]).name for x in report["leaks_removed"]] == ["same_as_d0.jpg"]
    assert report["counts"]["train"]["cat"] > report["counts"]["train"]["dog"] and report["imbalance_ratio"] > 1
    for name in ("report.json", "samples.png", "class_counts.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert Image.open(tmp_path / "report" / "samples.png").size[1] > 100
    printed = capsys.readouterr().out
    assert "cut.jpg: truncated" in printed and "imbalance ratio" in printed and "problems that stop training" in printed


def test_training_skips_bad_files_counts_them_and_error_stops_with_the_list(tmp_path, tiny_cfg):
    root = messy_folder(tmp_path / "photos")
    with pytest.raises(DataError, match=r"\['empty'\].*hold no images"):
        train(tiny_cfg("dataset=imagefolder", f"dataset.root={root}", "data.preflight_cache=null"))
    shutil.rmtree(root / "train" / "empty")
    shutil.rmtree(root / "test" / "empty")
    overrides = (
        "dataset=imagefolder",
        f"dataset.root={root}",
        "preprocess.image_size=32",
        f"data.preflight_cache={tmp_path / 'cache'}",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=1",
    )
    with pytest.raises(DataError) as stopped:
        train(tiny_cfg(*overrides, "data.on_bad_image=error"))
    message = str(stopped.value)
    assert "3 unreadable image file(s)" in message and "data.on_bad_image=skip" in message
    assert all(f"{name}: {why}" in message for name, why in BAD.items())
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training

    metrics = train(tiny_cfg(*overrides))
    checks = metrics["data_checks"]
    assert checks["bad_files_skipped"] == 3 and checks["leaks_removed"] == 1
    assert sorted(Path(b["path"]).name for b in checks["bad_files"]) == sorted(BAD)
    assert metrics["dataset_sizes"]["test"] == 4  # 5 test images, the copy of a training image removed
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data_checks"]["bad_files_skipped"] == 3
    assert {"test/recall/cat", "test/recall/dog"} <= {f"test/{k}" for k in metrics["test"]}


def test_a_duplicate_never_reaches_both_train_and_evaluation(tmp_path):
    root = tmp_path / "pool"
    for c in ("a", "b"):
        for i in range(12):
            noise(root / c / f"{i}.png")
        for k in range(6):  # the same photo saved six times under different names
            shutil.copy(root / c / "0.png", root / c / f"copy{k}.png")
    cfg = {"source": "imagefolder", "root": str(root), "val_fraction": 0.2, "test_fraction": 0.2}
    dm = _dm(cfg)
    sha = {p: r.sha1 for p, r in dm.probes.items()}
    train_hashes = {sha[p] for p in dm.splits["train"].paths}
    for held in ("val", "test"):
        assert not train_hashes & {sha[p] for p in dm.splits[held].paths}
    assert not {sha[p] for p in dm.splits["val"].paths} & {sha[p] for p in dm.splits["test"].paths}
    assert dm.report()["duplicate_groups"] == 2
    kept = _dm(cfg, drop_leaks=False)
    assert sum(kept.sizes().values()) == 36 > sum(dm.sizes().values())


def test_a_file_that_breaks_during_training_is_skipped_and_reported(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(8):
            noise(root / c / f"{i}.jpg")
    dm = _dm({"source": "imagefolder", "root": str(root), "val_fraction": 0.25, "test_fraction": 0.25})
    victim = Path(dm.splits["train"].paths[0])
    victim.write_bytes(b"\xff\xd8\xff\xe0 overwritten by a sync tool")
    seen = sum(len(y) for _, y in dm.train_dataloader())
    assert seen == len(dm.splits["train"])  # the batch was filled with a replacement
    assert [b["path"] for b in dm.report()["broken_during_training"]] == [str(victim)]


# ---------------------------------------------------------------- sources and structural errors


def test_csv_manifest_with_splits_and_relative_paths(tmp_path):
    rows = ["path,label,split"]
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c in ("ok", "defect"):
            for i in range(n):
                noise(tmp_path / "img" / f"{split}_{c}_{i}.PNG")
                rows.append(f"img/{split}_{c}_{i}.PNG,{c},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    dm = _dm({"source": "csv", "manifest": str(tmp_path / "labels.csv")})
    assert dm.class_names == ["defect", "ok"] and dm.sizes() == {"train": 12, "val": 4, "test": 4}
    (tmp_path / "pool.csv").write_text("path,label\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows[1:]))
    assert sum(_dm({"source": "csv", "manifest": str(tmp_path / "pool.csv")}).sizes().values()) == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class\na.png,x\n", "needs a header line with the columns path,label"),
        ("path,label,split\na.png,x,training\n", "line 2: split 'training' is not one of"),
        ("path,label,split\na.png,x,train\nb.png,y,train\nc.png,x,test\n", r"split 'test'.*missing \['y'\]"),
        ("path,label\na.png,x\nb.png,x\n", "single class"),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        _dm({"source": "csv", "manifest": str(tmp_path / "m.csv")})


def test_structural_errors_of_presplit_folders(tmp_path):
    for i in range(4):
        noise(tmp_path / "train" / "a" / f"{i}.jpg")
        noise(tmp_path / "train" / "b" / f"{i}.jpg")
    noise(tmp_path / "test" / "a" / "0.jpg")
    noise(tmp_path / "test" / "c" / "0.jpg")
    with pytest.raises(DataError, match=r"split 'test'.*missing \['b'\], extra \['c'\]"):
        _dm({"source": "imagefolder", "root": str(tmp_path)})
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(DataError, match="no train/ folder"):
        _dm({"source": "imagefolder", "root": str(tmp_path)})


def test_a_class_left_empty_by_skipped_files_is_a_clear_error(tmp_path):
    for i in range(5):
        noise(tmp_path / "a" / f"{i}.jpg")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"class\(es\) \['b'\] have no images left"):
        _dm({"source": "imagefolder", "root": str(tmp_path)})


# ---------------------------------------------------------------- pre-flight cache, balance, CLI


def test_preflight_cache_skips_unchanged_files_and_rereads_changed_ones(tmp_path, monkeypatch):
    paths = [str(noise(tmp_path / f"{i}.png")) for i in range(4)]
    cache = tmp_path / "cache.json"
    first = preflight(paths, cache)
    calls = []
    monkeypatch.setattr(preflight_mod, "probe", lambda p: calls.append(p) or preflight_mod.Probe(p, "fake"))
    assert preflight(paths, cache) == first and calls == []
    Path(paths[0]).write_bytes(b"changed")
    assert preflight(paths, cache)[paths[0]].reason == "fake" and calls == [paths[0]]


def test_balance_weights_and_sampler(tmp_path, caplog):
    for c, n in (("big", 20), ("small", 4)):
        for i in range(n):
            noise(tmp_path / c / f"{i}.png", size=(8, 8))
    cfg = {"source": "imagefolder", "root": str(tmp_path), "val_per_class": 1, "test_per_class": 1}
    with caplog.at_level("INFO"):
        dm = _dm(cfg, balance="weights")
    assert "'big': 18, 'small': 2" in caplog.text and "imbalance ratio 9.00" in caplog.text
    weights = dm.loss_weights()
    assert weights[1] == pytest.approx(9 * weights[0]) and np.dot(weights, [18, 2]) == pytest.approx(20)
    assert _dm(cfg).loss_weights() is None
    loader = _dm(cfg, balance="sampler", batch_size=400).train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    drawn = torch.cat([y for _, y in loader])
    assert 0.3 < drawn.float().mean() < 0.7  # the small class is drawn about half the time, not 10%


def test_inspect_command_line(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(5):
            noise(root / c / f"{i}.jpg")
    proc = subprocess.run(
        [sys.executable, "-m", "tlexp.inspect", "model=test_resnet", "dataset=imagefolder", f"dataset.root={root}",
         "data.preflight_cache=null", f"hydra.run.dir={tmp_path}/out"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dataset imagefolder: 2 classes" in proc.stdout and (tmp_path / "out" / "samples.png").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "tlexp.inspect", "dataset=imagefolder", f"dataset.root={tmp_path}/nope",
         f"hydra.run.dir={tmp_path}/out2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
