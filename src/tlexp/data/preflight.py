"""Pre-flight check of image files before training: decode each once (in parallel), cache the verdict.

For every file it records the reason it is unreadable (or None), the size and mode, and a content hash
(for the duplicate check). Verdicts are cached by path, size and modification time, so a second run over
an unchanged folder reads no pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from .images import BadImage, open_rgb

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class Probe:
    """What the pre-flight learnt about one file."""

    path: str
    reason: str | None = None  # why it cannot be used; None = fine
    width: int = 0
    height: int = 0
    mode: str = ""
    sha1: str = ""


def probe(path: str) -> Probe:
    """Header check (PIL identifies the format), full decode, content hash."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return Probe(path, reason=f"cannot read: {err.strerror or err}")
    found = Probe(path, sha1=hashlib.sha1(data).hexdigest())
    if not data:
        found.reason = "empty file (0 bytes)"
        return found
    try:
        with Image.open(path) as img:  # header only: the original size and mode, before conversion
            found.width, found.height, found.mode = img.width, img.height, img.mode
        open_rgb(path)  # the decode training will do
    except BadImage as bad:
        found.reason = bad.reason
    except Exception:  # noqa: BLE001 - the header itself is unreadable
        found.reason = "not an image PIL can read"
    return found


def _key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def preflight(paths: list[str], cache_file: str | Path | None = None, workers: int | None = None) -> dict[str, Probe]:
    """Probe every file (cached ones are not read again); returns path -> Probe.

    The cache only saves time: when it cannot be read or written, one warning says so and the check goes on.
    """
    cache, usable = read_cache(cache_file) if cache_file else ({}, False)
    results: dict[str, Probe] = {}
    todo = []
    for path in dict.fromkeys(paths):
        key, hit = _key(path), cache.get(path)
        if key is not None and hit and hit.get("key") == key:
            results[path] = Probe(**hit["probe"])
        else:
            todo.append(path)
    if todo:
        # PIL releases the GIL while decoding, so threads run decodes in parallel without pickling anything.
        with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
            for found in pool.map(probe, todo):
                results[found.path] = found
    log.info(
        "pre-flight: %d files, %d decoded now, %d from the cache",
        len(results),
        len(todo),
        len(results) - len(todo),
    )
    if usable and todo:
        write_cache(cache_file, results)
    return results


def read_cache(cache_file: str | Path) -> tuple[dict, bool]:
    """(cached verdicts, whether to write the cache back); a cache that cannot be read is warned about once."""
    try:
        stored = json.loads(Path(cache_file).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}, True  # no cache yet; if its folder cannot be made, writing it says so
    except OSError as err:
        _unusable(cache_file, "read", err)
        return {}, False
    except ValueError:
        return {}, True  # a damaged cache is only a slower start
    files = stored.get("files") if isinstance(stored, dict) and stored.get("version") == CACHE_VERSION else None
    return (files if isinstance(files, dict) else {}), True


def write_cache(cache_file: str | Path, results: dict[str, Probe]) -> None:
    keep = {p: {"key": _key(p), "probe": asdict(r)} for p, r in results.items() if _key(p)}
    tmp = Path(f"{cache_file}.tmp{os.getpid()}")
    try:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": keep}))
        tmp.replace(cache_file)  # atomic: two runs starting together never read half a file
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        _unusable(cache_file, "written", err)


def _unusable(cache_file: str | Path, how: str, err: OSError) -> None:
    log.warning(
        "the pre-flight cache %s cannot be %s (%s); going on without it, so every image is decoded again at the "
        "next start. Set data.preflight_cache=<a writable folder>, or data.preflight_cache=null to turn it off.",
        cache_file,
        how,
        err.strerror or err,
    )
