"""Cached backbone features: head-only phases train on features computed once, not once per epoch.

A phase that trains only the head, with the backbone frozen and its BatchNorm in eval mode, sees the same
backbone output every epoch. `FeatureCache` computes that output once per split (and per augmented view),
stores it on disk under a key that hashes everything that changes it, and serves it to the DataModule as
(features, label) batches; `TransferModule.forward` skips the backbone when a batch holds features.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlexp.config.errors import ConfigError
from tlexp.data.balance import balanced_sampler
from tlexp.data.images import ImageSet, TransformedImages
from tlexp.run.atomic import write_bytes

log = logging.getLogger(__name__)

MAGIC = b"TLEXPFT1"  # file = magic, payload length (8 bytes), sha256 of payload (32 bytes), payload
_HEADER = len(MAGIC) + 8 + 32
MODES = ("auto", "on", "off")


# ---------------------------------------------------------------- identities that go into a key


def images_fingerprint(images: ImageSet) -> str:
    """What identifies a split's images: pixel bytes for decoded sets, path + size + mtime for files."""
    h = hashlib.sha256(np.ascontiguousarray(images.labels).tobytes())
    pixels = getattr(images, "pixels", None)
    paths = getattr(images, "paths", None)
    if isinstance(pixels, torch.Tensor):
        h.update(str(tuple(pixels.shape)).encode())
        h.update(pixels.contiguous().numpy().tobytes())
    elif paths is not None:
        for p in paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:  # an ImageSet of another kind: hash what it decodes to (slow, but never wrong)
        for i in range(len(images)):
            h.update(np.asarray(images.image(i)).tobytes())
    return h.hexdigest()


def weights_fingerprint(backbone: nn.Module) -> str:
    """Hash of every parameter and buffer: the weights' identity, whatever file or tag they came from."""
    h = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def transform_steps(transform) -> list[str]:
    """The transform's shape: its steps by class name (their settings are keyed one by one)."""
    return [type(t).__name__ for t in getattr(transform, "transforms", [transform])]


def library_versions() -> dict:
    """Versions of the libraries that decode, transform and forward the images: a new release may change any."""
    return {
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
    }


def forward_numerics(backbone: nn.Module) -> dict:
    """What changes the backbone's output besides its weights: compute dtype, device, memory format, compile, TF32."""
    param = next(backbone.parameters())
    device = param.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return {
        "dtype": str(torch.get_autocast_dtype(device) if autocast else param.dtype),
        "device": device,
        # NHWC weights (accel.apply_channels_last) pick other convolution kernels: other rounding.
        "channels_last": any(
            p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
            for p in backbone.parameters()
        ),
        "compiled": getattr(backbone, "_compiled_call_impl", None) is not None,  # set by nn.Module.compile()
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- the store on disk


class FeatureStore:
    """Files of tensors under `root`, written atomically and checked on every read.

    Writes go through `run.atomic` (a temp file in the same folder, then `os.replace`): concurrent writers of
    one key each rename a whole file, so a reader sees one complete file or none. A length + sha256 header catches
    truncated or corrupt files; those are deleted and recomputed, never trusted. The cache only saves time:
    a file that cannot be read is recomputed, and one that cannot be written (a full disk, no permission)
    leaves the run going on without it, each with a warning.
    """

    FIX = "Set `cache.dir=<a writable folder>` (or TLEXP_CACHE_DIR), or turn the cache off: `cache.mode=off`."

    def __init__(self, root: str | Path):
        self.root = Path(os.path.expanduser(str(root)))
        self._write_warned = False

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def check(self) -> None:
        """Stop before any work when the cache folder can never exist: its path, or a folder above, is a file."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            where = "is" if existing == self.root else f"is inside {existing}, which is"
            raise ConfigError(f"the feature cache folder {self.root} {where} a file, not a folder. {self.FIX}")

    def load(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:  # another user's file, a failing disk: recompute rather than stop
            log.warning(
                "cannot read the feature cache file %s (%s): recomputing it. %s",
                path,
                err.strerror or err,
                "Fix its permissions, or `make clean-cache`; or " + self.FIX[0].lower() + self.FIX[1:],
            )
            return None
        problem = None
        if len(data) < _HEADER or data[: len(MAGIC)] != MAGIC:
            problem = "bad header"
        else:
            length = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "big")
            payload = data[_HEADER:]
            if len(payload) != length:
                problem = f"truncated ({len(payload)} of {length} bytes)"
            elif hashlib.sha256(payload).digest() != data[len(MAGIC) + 8 : _HEADER]:
                problem = "checksum mismatch"
        if problem is None:
            try:
                return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable payload is a corrupt file
                problem = f"unreadable ({type(err).__name__})"
        log.warning("feature cache file %s is corrupt (%s): recomputing it", path, problem)
        with contextlib.suppress(OSError):  # if it cannot be deleted, the rewrite replaces it or warns
            path.unlink(missing_ok=True)
        return None

    def save(self, key: str, payload: dict) -> Path | None:
        """Write `payload` under `key`; None, with a warning, when it cannot be written (the run goes on)."""
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        body = buffer.getvalue()
        header = MAGIC + len(body).to_bytes(8, "big") + hashlib.sha256(body).digest()
        try:
            return write_bytes(self.path(key), header + body)  # whole under its name, or not there
        except OSError as err:
            self._warn_unwritable(err)
            return None

    def _warn_unwritable(self, err: OSError) -> None:
        if self._write_warned:
            return  # one warning per run: each split would say the same
        self._write_warned = True
        log.warning(
            "cannot write the feature cache in %s (%s): this run goes on without storing its features, so the "
            "next run computes them again. Free some space there or `make clean-cache`; or %s",
            self.root,
            err.strerror or err,
            self.FIX[0].lower() + self.FIX[1:],
        )


# ---------------------------------------------------------------- computing features


@torch.no_grad()  # not inference_mode: the features feed autograd later (head, linear probe)
def extract(backbone: nn.Module, images: ImageSet, transform, batch_size: int, num_workers: int, seed: int):
    """Eval-mode backbone features of every image, in order: (features [N, D] float32, labels [N])."""
    device = next(backbone.parameters()).device
    modes = {m: m.training for m in backbone.modules()}  # frozen BN stays in eval mode afterwards
    backbone.eval()
    # A private RNG stream: augmented views are reproducible, and the run's own RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = DataLoader(
            TransformedImages(images, transform),
            batch_size=batch_size,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )
        chunks = [backbone(x.to(device)).float().cpu() for x, _ in loader]
    for m, mode in modes.items():
        m.training = mode
    return torch.cat(chunks), torch.as_tensor(images.labels, dtype=torch.long)


# ---------------------------------------------------------------- which phases can use it


def cached_phase_count(phases, mode: str, freeze_mode: str = "auto") -> int:
    """How many leading phases train on cached features (0 = none).

    A phase qualifies when it trains the head only and BatchNorm in the backbone runs in eval mode. Only
    the leading run of such phases: after a phase that trains the backbone, its features have changed.
    """
    if mode not in MODES:
        raise ConfigError(f"cache.mode '{mode}' is not one of {', '.join(MODES)}.")
    if mode == "off":
        return 0
    n = 0
    while n < len(phases) and phases[n].train == ["head"] and phases[n].bn in ("frozen", "eval"):
        n += 1
    why = None
    if n == 0:
        why = "its first phase does not train the head alone with BatchNorm frozen (bn: frozen or eval)"
    elif freeze_mode == "zero_lr":
        why = "freeze_mode=zero_lr keeps gradients flowing through the backbone (for DDP)"
    if why is None:
        return n
    if mode == "on":
        raise ConfigError(
            f"cache.mode=on, but this strategy cannot train on cached features: {why}. Cached features need a "
            "frozen backbone (e.g. strategy=feature_extraction, or gradual's first phase); use cache.mode=auto or off."
        )
    return 0


# ---------------------------------------------------------------- serving them


class FeatureCache:
    """Serves cached (features, label) loaders to the DataModule for the epochs of the leading head-only phases.

    views = K > 0: K augmented views of each training image are computed once; epoch e trains on view
    e mod K. views = 0: head-only phases train without augmentation (the eval transform). Val and test
    always use the eval transform; test is served from the cache only when no phase trains the backbone.
    """

    def __init__(
        self,
        datamodule,
        backbone: nn.Module,
        model_name: str,
        cached_epochs: int,
        all_cached: bool,
        views: int,
        store: FeatureStore,
    ):
        if not isinstance(views, int) or views < 0:
            raise ConfigError(f"cache.views must be a whole number >= 0 (0 = no augmentation), got {views!r}.")
        self.dm, self.backbone, self.model_name = datamodule, backbone, model_name
        self.cached_epochs, self.all_cached = cached_epochs, all_cached
        self.views = views if datamodule.augmented else 0
        self.store = store
        self._weights: str | None = None
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed: list[str] = []  # "split/view" names, for the run record and tests
        self.loaded: list[str] = []

    def serves(self, split: str, epoch: int | None) -> bool:
        if split == "test":
            return self.all_cached
        return epoch is not None and epoch < self.cached_epochs

    def view_for(self, split: str, epoch: int) -> int | None:
        """None = the eval transform; else the augmented view index."""
        return epoch % self.views if split == "train" and self.views else None

    def key(self, split: str, view: int | None) -> str:
        """Hash of everything the features of `split` (eval transform, or augmented `view`) depend on."""
        if self._weights is None:
            self._weights = weights_fingerprint(self.backbone)
        dm = self.dm
        parts = {
            "backbone": self.model_name,
            "weights": self._weights,
            "forward": forward_numerics(self.backbone),
            "versions": library_versions(),
            "preprocess": {
                "image_size": dm.image_size,
                "mean": list(dm.mean),
                "std": list(dm.std),
                "interpolation": dm.interpolation,
                "crop_pct": dm.crop_pct,
                "background": list(dm.background),  # transparent pixels are composited on it when decoded
            },
            "transform": transform_steps(dm.eval_transform if view is None else dm.train_transform),
            "dataset": dm.source.identity,
            "split": split,
            "images": images_fingerprint(dm.splits[split]),  # captures split_seed, per_class, train_size
            "view": "eval" if view is None else {"index": view, "augment": dm.augment},
        }
        return cache_key(parts)

    def features(self, split: str, view: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        name = f"{split}/{'eval' if view is None else f'view{view}'}"
        if name in self._memo:
            return self._memo[name]
        self.dm.setup()
        key = self.key(split, view)
        payload = self.store.load(key)
        if payload is not None and torch.equal(payload["labels"], torch.as_tensor(self.dm.splits[split].labels)):
            self.loaded.append(name)
        else:
            transform = self.dm.eval_transform if view is None else self.dm.train_transform
            images, seed = self.dm.splits[split], 1000 + (view or 0)
            feats, labels = extract(self.backbone, images, transform, self.dm.batch_size, self.dm.num_workers, seed)
            payload = {"features": feats, "labels": labels}
            stored = self.store.save(key, payload)
            self.computed.append(name)
            log.info("feature cache: computed %s (%d x %d) -> %s", name, *feats.shape, stored or "not stored")
        self._memo[name] = (payload["features"], payload["labels"])
        return self._memo[name]

    def loader(self, split: str, epoch: int | None) -> DataLoader:
        train = split == "train"
        feats, labels = self.features(split, self.view_for(split, epoch) if train else None)
        sampler = self._balanced_sampler(labels, epoch) if train and self.dm.balance == "sampler" else None
        # Same batching as the image loaders, so both paths take the same steps; tensors in memory need no workers.
        return DataLoader(
            TensorDataset(feats, labels),
            batch_size=self.dm.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(labels) > self.dm.batch_size,
        )

    def _balanced_sampler(self, labels: torch.Tensor, epoch: int | None):
        """data.balance=sampler, as for images; seeded per epoch, since cached loaders may be rebuilt each epoch."""
        seed = int(self.dm.cfg.get("split_seed", 0)) + (epoch or 0)
        return balanced_sampler(labels.numpy(), self.dm.num_classes, seed)

    def needs_reload(self) -> bool:
        """Whether the training loader changes between epochs (views, or images after the cached phases)."""
        return self.views > 1 or not self.all_cached

    def report(self) -> dict:
        return {
            "cached_epochs": self.cached_epochs,
            "views": self.views,
            "test_from_cache": self.all_cached,
            "dir": str(self.store.root),
            "computed": list(self.computed),
            "loaded": list(self.loaded),
        }


def feature_cache_for(cfg: dict, phases, freeze_mode: str, datamodule, backbone: nn.Module, model_name: str):
    """The FeatureCache a run's config asks for, attached to its DataModule; None when no phase can use it."""
    cfg = dict(cfg or {})
    n = cached_phase_count(phases, str(cfg.get("mode", "auto")), freeze_mode)
    if n == 0:
        return None
    store = FeatureStore(cfg.get("dir") or "~/.cache/tlexp/features")
    store.check()
    cache = FeatureCache(
        datamodule,
        backbone,
        model_name,
        cached_epochs=sum(p.epochs for p in phases[:n]),
        all_cached=n == len(phases),
        views=cfg.get("views", 0),
        store=store,
    )
    datamodule.features = cache
    return cache


class UnsavedStore(FeatureStore):
    """cache.mode=off: features are computed for this run alone, never read from or written to disk."""

    def load(self, key: str) -> dict | None:
        return None

    def check(self) -> None:
        pass  # nothing is read or written

    def save(self, key: str, payload: dict) -> Path | None:
        return None


def eval_feature_cache(cfg: dict, datamodule, backbone: nn.Module, model_name: str) -> FeatureCache:
    """Eval-transform features of the splits, for the probe alone: no phase trains on them."""
    cfg = dict(cfg or {})
    store = (UnsavedStore if cfg.get("mode") == "off" else FeatureStore)(cfg.get("dir") or "~/.cache/tlexp/features")
    store.check()
    return FeatureCache(datamodule, backbone, model_name, cached_epochs=0, all_cached=False, views=0, store=store)
