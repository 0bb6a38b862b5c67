"""Cached backbone features: hits, misses, corrupt files, views in turn, equality with the image path."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import PIL
import pytest
import timm
import torch
import torchvision
from lightning.pytorch.callbacks import Callback

from tlexp.config.errors import ConfigError
from tlexp.data import TransferDataModule
from tlexp.features.cache import FeatureCache, FeatureStore
from tlexp.features.probe import linear_probe
from tlexp.model.backbones import create_backbone
from tlexp.run.accel import apply_channels_last
from tlexp.train import train

from .conftest import TINY, compose_cfg

SYNTHETIC = {"name": "synthetic", "source": "synthetic", "num_classes": 4, "images_per_class": 40, "native_size": 32}


class BackboneCalls(Callback):
    """Counts backbone forward passes (features computed) and records what each training epoch was fed."""

    def __init__(self):
        self.calls = 0
        self.batches: list[torch.Tensor] = []

    def on_fit_start(self, trainer, pl_module):
        self.cache = trainer.datamodule.features
        pl_module.backbone.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.batches.append(batch[0])


def _cfg(tmp, weights, name, *overrides):
    return compose_cfg(
        "model=test_resnet",
        f"model.weights={weights}",
        "dataset=synthetic",
        "data.batch_size=16",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        f"output_dir={tmp / name}",
        f"cache.dir={tmp / 'cache'}",
        "strategy=feature_extraction",
        "strategy.phases.0.epochs=2",
        "augment.enabled=false",
        "report.enabled=true",  # it reuses the test pass's logits and the cached val features
        "report.train_batch_preview=0",
        *overrides,
    )


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_weights):
    """feature_extraction without augmentation: on images (cache off), on a cold cache, on a warm cache."""
    tmp = tmp_path_factory.mktemp("features")
    runs = {}
    probe = ("linear_probe=true",)
    for name, mode, extra in (("images", "off", ()), ("cold", "auto", probe), ("warm", "auto", probe)):
        calls = BackboneCalls()
        metrics = train(_cfg(tmp, tiny_weights, name, f"cache.mode={mode}", *extra), callbacks=[calls])
        runs[name] = (metrics, calls, tmp / name)
    return runs


def test_second_run_loads_features_and_never_runs_the_backbone(three_runs):
    cold, cold_calls, _ = three_runs["cold"]
    warm, warm_calls, _ = three_runs["warm"]
    assert sorted(cold["feature_cache"]["computed"]) == ["test/eval", "train/eval", "val/eval"]
    assert cold_calls.calls > 0
    assert warm["feature_cache"]["computed"] == []
    assert sorted(warm["feature_cache"]["loaded"]) == ["test/eval", "train/eval", "val/eval"]
    assert warm_calls.calls == 0  # fit, test, the evaluation report, the linear probe: no backbone forward at all
    assert warm["evaluation"]["accuracy"] == pytest.approx(warm["test"]["acc"], abs=1e-6)
    assert all(batch.ndim == 2 for batch in warm_calls.batches)  # the head was fed features
    assert warm["test"] == pytest.approx(cold["test"], abs=1e-6)


def test_cached_run_equals_the_image_run_without_augmentation(three_runs):
    images, image_calls, image_dir = three_runs["images"]
    cold, _, cold_dir = three_runs["cold"]
    assert images["feature_cache"] is None and all(b.ndim == 4 for b in image_calls.batches)
    assert cold["best_val_acc"] == pytest.approx(images["best_val_acc"], abs=1e-6)
    assert cold["test"] == pytest.approx(images["test"], abs=1e-4)
    head = [torch.load(d / "checkpoints/last.ckpt", weights_only=False)["state_dict"] for d in (image_dir, cold_dir)]
    for key in ("head.1.weight", "head.1.bias"):
        torch.testing.assert_close(head[0][key], head[1][key], atol=1e-4, rtol=1e-4)
    # The run record and checkpoints are those of a normal run.
    assert cold.keys() == images.keys() and (cold_dir / "metrics.json").is_file()


def test_linear_probe_row_is_reported_on_a_cold_and_a_warm_cache(three_runs):
    cold, warm = three_runs["cold"][0]["linear_probe"], three_runs["warm"][0]["linear_probe"]
    # The synthetic classes are colours: linearly separable in any backbone's features (chance is 0.25).
    assert cold["test"]["acc"] > 0.9 and cold["l2"] in cold["l2_grid"]
    assert warm["test"] == pytest.approx(cold["test"], abs=1e-6)
    assert three_runs["images"][0]["linear_probe"] is None


def test_views_are_used_in_turn_and_gradual_switches_to_images(tmp_path, tiny_weights):
    head = "{name: head, epochs: 3, train: [head], lr: 1e-3}"
    rest = "{name: all, epochs: 1, train: [all], lr: 1e-4}"
    cfg = _cfg(tmp_path, tiny_weights, "run", "strategy=gradual", f"strategy.phases=[{head}, {rest}]")
    cfg.augment.enabled, cfg.cache.views = True, 2
    calls = BackboneCalls()
    metrics = train(cfg, callbacks=[calls])
    report = metrics["feature_cache"]
    assert report["cached_epochs"] == 3 and not report["test_from_cache"]
    assert sorted(report["computed"]) == ["train/view0", "train/view1", "val/eval"]
    first, second, third, images = calls.batches
    assert first.ndim == second.ndim == third.ndim == 2 and images.ndim == 4  # phase 2 trains on images
    view0, view1 = (calls.cache._memo[f"train/view{v}"][0] for v in (0, 1))
    assert not torch.equal(view0, view1)
    for batch, view in ((first, view0), (second, view1), (third, view0)):  # epoch e uses view e mod 2
        assert all(any(torch.equal(row, v) for v in view) for row in batch[:4])


def _datamodule(weights, augment=None, **dataset):
    backbone, _ = create_backbone(TINY, str(weights))
    dm = TransferDataModule(
        {**SYNTHETIC, **dataset},
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        crop_pct=1.0,
        augment=augment or {"scale_min": 0.5},
        batch_size=16,
    )
    dm.setup()
    return dm, backbone


def _keys(cache: FeatureCache) -> dict[str, str]:
    return {s: cache.key(s, None) for s in ("train", "val", "test")} | {"view0": cache.key("train", 0)}


def _cache(tmp_path, weights, name=TINY, **dataset) -> FeatureCache:
    return FeatureCache(*_datamodule(weights, **dataset), name, 1, True, 2, FeatureStore(tmp_path))


def _with_extra_step(monkeypatch, builder: str) -> None:
    from torchvision.transforms import v2

    import tlexp.data.datamodule as datamodule

    original = getattr(datamodule, builder)
    monkeypatch.setattr(datamodule, builder, lambda *a, **k: v2.Compose([*original(*a, **k).transforms, v2.Identity()]))


def _nudge_weights(cache, monkeypatch):
    with torch.no_grad():
        next(cache.backbone.parameters()).add_(1e-3)


def _move_to_meta(cache, monkeypatch):
    cache.key("val", None)  # the weights are hashed once, on the first key; then the same weights move
    cache.backbone.to("meta")


# Each changes exactly one input of the pixel path or of the backbone forward; a context manager is held while
# the keys are computed. Dropping any one of them from FeatureCache.key makes its case fail.
ONE_INPUT_CHANGED = {
    "weights": _nudge_weights,
    "image_size": lambda c, mp: setattr(c.dm, "image_size", 28),
    "mean": lambda c, mp: setattr(c.dm, "mean", (0.4,) * 3),
    "std": lambda c, mp: setattr(c.dm, "std", (0.6,) * 3),
    "interpolation": lambda c, mp: setattr(c.dm, "interpolation", "bicubic"),
    "crop_pct": lambda c, mp: setattr(c.dm, "crop_pct", 0.875),
    "background": lambda c, mp: setattr(c.dm, "background", (0, 0, 0)),
    "transform steps": lambda c, mp: (_with_extra_step(mp, "eval_transform"), _with_extra_step(mp, "train_transform")),
    "torch version": lambda c, mp: mp.setattr(torch, "__version__", "0.0.1"),
    "torchvision version": lambda c, mp: mp.setattr(torchvision, "__version__", "0.0.1"),
    "timm version": lambda c, mp: mp.setattr(timm, "__version__", "0.0.1"),
    "pillow version": lambda c, mp: mp.setattr(PIL, "__version__", "0.0.1"),
    "compute dtype": lambda c, mp: torch.autocast("cpu", dtype=torch.bfloat16),
    "device": _move_to_meta,
    "channels_last": lambda c, mp: apply_channels_last(c.backbone),
    "compiled": lambda c, mp: c.backbone.compile(),
    "matmul precision": lambda c, mp: mp.setattr(torch, "get_float32_matmul_precision", lambda: "medium"),
    "cudnn tf32": lambda c, mp: mp.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32),
    "backbone name": lambda c, mp: setattr(c, "model_name", "other"),
}


@pytest.fixture(scope="module")
def base_keys(tmp_path_factory, tiny_weights):
    return _keys(_cache(tmp_path_factory.mktemp("keys"), tiny_weights))


def test_same_inputs_give_the_same_key(tmp_path, tiny_weights, base_keys):
    assert _keys(_cache(tmp_path, tiny_weights)) == base_keys  # rebuilt from scratch, as another process would
    assert len(set(base_keys.values())) == 4


@pytest.mark.parametrize("what", list(ONE_INPUT_CHANGED))
def test_key_changes_when_one_input_of_the_features_changes(tmp_path, tiny_weights, base_keys, monkeypatch, what):
    cache = _cache(tmp_path, tiny_weights)
    held = ONE_INPUT_CHANGED[what](cache, monkeypatch)
    with held if hasattr(held, "__enter__") else contextlib.nullcontext():
        changed = _keys(cache)
    assert all(changed[k] != base_keys[k] for k in base_keys), what


@pytest.mark.parametrize("dataset", [{"images_per_class": 41}, {"split_seed": 1}])
def test_key_changes_with_the_images(tmp_path, tiny_weights, base_keys, dataset):
    changed = _keys(_cache(tmp_path, tiny_weights, **dataset))
    assert all(changed[k] != base_keys[k] for k in base_keys)


def test_key_of_a_split_depends_on_its_own_images_and_views_on_the_augmentation(tmp_path, tiny_weights, base_keys):
    # Fewer training images change the training set's key only: val/test features are reused.
    fewer = _keys(_cache(tmp_path, tiny_weights, per_class=10))
    assert fewer["train"] != base_keys["train"] and fewer["view0"] != base_keys["view0"]
    assert fewer["val"] == base_keys["val"] and fewer["test"] == base_keys["test"]
    # The augmentation changes the views' keys, not the eval features'.
    dm, backbone = _datamodule(tiny_weights, augment={"scale_min": 0.5, "color_jitter": 0.3})
    jitter = _keys(FeatureCache(dm, backbone, TINY, 1, True, 2, FeatureStore(tmp_path)))
    assert jitter["view0"] != base_keys["view0"] and jitter["train"] == base_keys["train"]
    assert _cache(tmp_path, tiny_weights).key("train", 1) != base_keys["view0"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_cache_file_is_recomputed(tmp_path, tiny_weights, damage, caplog):
    dm, backbone = _datamodule(tiny_weights)
    store = FeatureStore(tmp_path)
    cache = FeatureCache(dm, backbone, TINY, 1, True, 0, store)
    good, _ = cache.features("val")
    path = store.path(cache.key("val", None))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        path.write_bytes(b"not a cache file")
    again = FeatureCache(dm, backbone, TINY, 1, True, 0, store)
    feats, _ = again.features("val")
    assert again.computed == ["val/eval"] and again.loaded == []
    assert "corrupt" in caplog.text
    torch.testing.assert_close(feats, good)
    assert store.load(cache.key("val", None)) is not None  # rewritten whole


def test_concurrent_writers_of_one_key_never_leave_a_broken_file(tmp_path):
    store = FeatureStore(tmp_path)
    payloads = [{"features": torch.full((2000, 64), float(i)), "labels": torch.arange(2000)} for i in range(3)]
    seen, stop = [], threading.Event()

    def write(p):
        for _ in range(15):
            store.save("k", p)

    def read():
        while not stop.is_set():
            got = store.load("k")
            if got is not None:
                seen.append(got["features"][0, 0].item())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert store.load("k")["features"].shape == (2000, 64)
    assert set(seen) <= {0.0, 1.0, 2.0} and seen
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"]  # no temp files left


def test_linear_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 4

    def split(n):
        y = torch.arange(3).repeat(n)
        return centres[y] + torch.randn(len(y), 8, generator=gen), y

    result = linear_probe(split(20), split(10), split(30), num_classes=3, grid=(1e-4, 1e-2, 1.0))
    assert result["test"]["acc"] > 0.9 and result["l2"] in (1e-4, 1e-2, 1.0)


def test_cache_on_with_a_strategy_that_trains_the_backbone_is_an_error(tmp_path, tiny_weights):
    with pytest.raises(ConfigError, match="cache.mode=on"):
        train(_cfg(tmp_path, tiny_weights, "run", "strategy=finetune", "cache.mode=on"))
    with pytest.raises(ConfigError, match="linear_probe"):
        train(_cfg(tmp_path, tiny_weights, "run", "strategy=gradual", "linear_probe=true"))


def test_cached_train_loader_draws_classes_balanced_with_balance_sampler(tmp_path, tiny_weights):
    backbone, _ = create_backbone(TINY, str(tiny_weights))
    dataset = {**SYNTHETIC, "images_per_class": 60}
    dm = TransferDataModule(dataset, 32, (0.5,) * 3, (0.5,) * 3, crop_pct=1.0, batch_size=16, balance="sampler")
    dm.setup()
    labels = dm.splits["train"].labels
    keep = np.concatenate([np.flatnonzero(labels == 0)] + [np.flatnonzero(labels == c)[:4] for c in (1, 2, 3)])
    dm.splits["train"] = dm.splits["train"].subset(keep)  # class 0: 36 images, the others 4 each
    dm.features = FeatureCache(dm, backbone, TINY, 10, True, 0, FeatureStore(tmp_path))
    loaders = [dm.train_dataloader()] + [dm.features.loader("train", epoch) for epoch in range(1, 10)]
    assert all(batch[0].ndim == 2 for batch in loaders[0])  # served from the cache
    drawn = np.bincount(torch.cat([y for loader in loaders for _, y in loader]).numpy(), minlength=4)
    # Unbalanced, class 0 would take 75 % of the draws; balanced, each class about a quarter.
    assert (np.abs(drawn / drawn.sum() - 0.25) < 0.08).all(), drawn
    epochs = [torch.cat([y for _, y in loader]) for loader in loaders[:2]]
    assert not torch.equal(*epochs)  # each epoch draws afresh


def test_a_phase_with_bn_train_runs_on_images_not_on_cached_features(tmp_path, tiny_weights):
    # bn: train updates the frozen backbone's statistics on every batch: features computed once would hide that.
    calls = BackboneCalls()
    metrics = train(_cfg(tmp_path, tiny_weights, "run", "strategy.bn=train", "cache.mode=auto"), callbacks=[calls])
    assert metrics["feature_cache"] is None and calls.cache is None
    assert all(batch.ndim == 4 for batch in calls.batches)
    with pytest.raises(ConfigError, match="cache.mode=on, but this strategy cannot train on cached features"):
        train(_cfg(tmp_path, tiny_weights, "again", "strategy.bn=train", "cache.mode=on"))


def test_the_key_of_an_augmented_view_names_the_augmentation_itself(tmp_path, tiny_weights, monkeypatch):
    """Where the transform's description does not show an augmentation setting (augmentation run on the batch, on
    the device), the key must still change with it: the settings are a part of the key in their own right."""
    from tlexp.features import cache as cache_module

    monkeypatch.setattr(cache_module, "transform_steps", lambda transform: ["the same steps"])
    keys = {}
    for hflip in (0.5, 0.0):
        dm, backbone = _datamodule(tiny_weights, augment={"scale_min": 0.5, "hflip": hflip})
        cache = FeatureCache(dm, backbone, TINY, 1, True, 2, FeatureStore(tmp_path))
        keys[hflip] = (cache.key("train", 0), cache.key("train", None))
    assert keys[0.5][0] != keys[0.0][0]  # the view's key follows the augmentation
    assert keys[0.5][1] == keys[0.0][1]  # the eval features' does not
