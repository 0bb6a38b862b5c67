"""Label new images with a trained model: top-k classes and probabilities per image, to CSV and JSON lines.

    python -m tlexp.predict ckpt=<file.ckpt|.onnx|.pt> input=<file|folder|glob> [top_k=5] [tta=true] [out=predictions]

Uses the model's own preprocessing and class names. Files that cannot be read are listed, not fatal, unless
none can be read: then nothing is written and the exit status is 2.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tlexp.config.cli import parse_args
from tlexp.config.errors import ConfigError, DataError, exit_on_user_error
from tlexp.config.validate import check_writable
from tlexp.data.images import open_rgb
from tlexp.data.sources import IMAGE_EXTENSIONS
from tlexp.model.inference import Classifier, load_classifier
from tlexp.run.atomic import atomic_open

log = logging.getLogger("tlexp")


def find_inputs(spec: str) -> list[Path]:
    """A file, every image under a folder (recursively), or what a glob matches."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ]
    elif glob.has_magic(spec):
        found = [Path(p) for p in glob.glob(str(Path(spec).expanduser()), recursive=True) if Path(p).is_file()]
    else:
        raise ConfigError(
            f"input={spec}: no such file or folder. Give an image, a folder, or a glob like 'photos/*.jpg'."
        )
    if not found:
        raise ConfigError(
            f"input={spec}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}). "
            "Check the path, or quote a glob so that the shell does not expand it."
        )
    return sorted(found)


class _Decoded(Dataset):
    """(index, preprocessed tensor or None, error message or None) per file: a bad file is a row, not a crash."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(open_rgb(self.paths[i])), None
        except Exception as err:  # noqa: BLE001 - arbitrary files fail to decode in many ways (PIL, OS, plugins)
            return i, None, f"{type(err).__name__}: {err}"


def _keep_as_list(batch):
    return batch


def predict(
    classifier: Classifier,
    paths: list[Path],
    top_k: int = 5,
    tta: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict]:
    """One record per path, in order: {path, labels, probs} or {path, error}."""
    k = max(1, min(int(top_k), len(classifier.class_names)))
    data = _Decoded(paths, classifier.transform())
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_as_list)
    records: list[dict | None] = [None] * len(paths)
    with tqdm(total=len(paths), unit="img", disable=not progress, desc="predict") as bar:
        for batch in loader:
            good = [(i, x) for i, x, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    records[i] = {"path": str(paths[i]), "error": err}
            if good:
                x = torch.stack([x for _, x in good])
                probs = classifier.forward(x).float().softmax(dim=1)
                if tta:  # average with the mirror image: the flip is in the training augmentation
                    probs = (probs + classifier.forward(x.flip(dims=[3])).float().softmax(dim=1)) / 2
                top = probs.topk(k, dim=1)
                for (i, _), values, indices in zip(good, top.values.tolist(), top.indices.tolist(), strict=True):
                    labels = [classifier.class_names[j] for j in indices]
                    records[i] = {"path": str(paths[i]), "labels": labels, "probs": [round(v, 6) for v in values]}
            bar.update(len(batch))
    return records


def write(records: list[dict], out: Path, k: int) -> tuple[Path, Path]:
    out = out.with_suffix("") if out.suffix in (".csv", ".jsonl") else out
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = Path(f"{out}.csv"), Path(f"{out}.jsonl")
    columns = ["path", "label", "prob"] + [f"{c}_{n}" for n in range(2, k + 1) for c in ("label", "prob")] + ["error"]
    with atomic_open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            pairs = [v for pair in zip(r.get("labels", []), r.get("probs", []), strict=True) for v in pair]
            writer.writerow([r["path"], *pairs, *[""] * (2 * k - len(pairs)), r.get("error", "")])
    with atomic_open(jsonl_path, "w") as f:
        for r in records:
            if "error" in r:
                f.write(json.dumps(r) + "\n")
            else:
                top = [{"label": lab, "prob": p} for lab, p in zip(r["labels"], r["probs"], strict=True)]
                f.write(json.dumps({"path": r["path"], "top": top}) + "\n")
    return csv_path, jsonl_path


def check_labelled(records: list[dict], spec: str, shown: int = 3) -> None:
    """A run whose every input is unreadable labelled nothing: an error, like a folder with no images in it.

    Raised before anything is written, so the predictions of an earlier run under the same out= are kept.
    """
    failed = [r for r in records if "error" in r]
    if len(failed) < len(records):
        return
    listed = "; ".join(f"{r['path']}: {' '.join(r['error'].split())}" for r in failed[:shown])
    more = f"; ... and {len(failed) - shown} more" if len(failed) > shown else ""
    what = "the file could not" if len(failed) == 1 else f"none of the {len(failed)} files could"
    raise DataError(
        f"input={spec}: {what} be read as an image ({listed}{more}); nothing was written. "
        "Give image files that are not empty or truncated."
    )


def run(cfg) -> list[dict]:
    # Before any image is labelled: a read-only or full output folder would lose all that work at the end.
    check_writable(Path(cfg.out).expanduser().parent, f"Pass out=<a writable path>/predictions (now out={cfg.out}).")
    classifier = load_classifier(cfg.ckpt)
    paths = find_inputs(cfg.input)
    k = max(1, min(int(cfg.top_k), len(classifier.class_names)))
    records = predict(classifier, paths, k, cfg.tta, cfg.batch_size, cfg.num_workers, cfg.progress)
    check_labelled(records, cfg.input)
    csv_path, jsonl_path = write(records, Path(cfg.out).expanduser(), k)
    failed = [r for r in records if "error" in r]
    print(f"\n  labelled  {len(records) - len(failed)} of {len(records)} images ({classifier.kind}: {cfg.ckpt})")
    if failed:
        print(f"  unreadable {len(failed)} (listed with their error in the CSV):")
        for r in failed[:10]:
            print(f"    {r['path']}: {r['error']}")
        if len(failed) > 10:
            print(f"    ... and {len(failed) - 10} more")
    print(f"  written   {csv_path}, {jsonl_path}\n", flush=True)
    return records


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_args(sys.argv[1:] if argv is None else argv, "predict", __doc__))


if __name__ == "__main__":
    main()
