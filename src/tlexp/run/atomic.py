"""Writes that never leave a partial file under its final name: a temp file in the same folder, fsync, os.replace.

The temp file lives next to the target, never in the system temp dir: that is often another filesystem, where
the final move becomes a copy that a full disk or a kill can cut short under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

_UMASK = os.umask(0)  # read once: mkstemp makes 0600 files, the final file gets the usual 0666 & ~umask
os.umask(_UMASK)


def _fsync(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows, for folders) refuse fsync on a folder: the rename still holds
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix is kept last: writers that pick the format from the name (savefig, onnx) still work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)  # the rename itself survives a power cut
    finally:
        _remove_quietly(tmp)


def _remove_quietly(tmp: str) -> None:
    """Remove a leftover temp file; failing to (a mount gone read-only) must not hide why the write failed."""
    with contextlib.suppress(OSError):
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator:
    """`open(path, mode)` whose file appears under `path` only once it is completely written."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the temp file in the checkpoint's own folder (`Trainer(plugins=[...])`).

    Lightning's own writer goes through fsspec, whose local transaction stages the file in the system temp dir.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: fsspec's way is the right one
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
