"""Exact duplicates (same content hash) within and across splits, and removal of leaks from evaluation."""

from __future__ import annotations

import numpy as np

from .images import ImageFiles, ImageSet


def duplicate_groups(splits: dict[str, ImageSet], sha1: dict[str, str], class_names: list[str]) -> list[dict]:
    """Groups of files with identical content: [{"files": [{"split", "path", "label"}, ...], "sha1"}, ...]."""
    by_hash: dict[str, list[dict]] = {}
    for split, images in splits.items():
        if not isinstance(images, ImageFiles):
            continue
        for path, label in zip(images.paths, images.labels, strict=True):
            if sha1.get(path):
                by_hash.setdefault(sha1[path], []).append(
                    {"split": split, "path": path, "label": class_names[int(label)]}
                )
    return [{"sha1": h, "files": files} for h, files in by_hash.items() if len(files) > 1]


def drop_leaks(splits: dict[str, ImageSet], sha1: dict[str, str]) -> tuple[dict[str, ImageSet], list[dict]]:
    """Remove from val and test every image whose content is also in an earlier split (train, then val).

    The training side keeps its copy: the leak is fixed where it would inflate the reported accuracy.
    """
    seen: set[str] = set()
    kept, removed = {}, []
    for split in [s for s in ("pool", "train", "val", "test") if s in splits]:
        images = splits[split]
        if not isinstance(images, ImageFiles):
            kept[split] = images
            continue
        hashes = [sha1.get(p, "") for p in images.paths]
        if split not in ("pool", "train"):
            keep = [i for i, h in enumerate(hashes) if not h or h not in seen]
            if len(keep) < len(images):
                removed += [{"split": split, "path": images.paths[i]} for i in set(range(len(images))) - set(keep)]
                images = images.subset(np.asarray(keep, dtype=np.int64))
        kept[split] = images
        seen.update(h for h in hashes if h)
    return kept, sorted(removed, key=lambda r: (r["split"], r["path"]))
