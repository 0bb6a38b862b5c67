"""Label new images with a trained model: top-k classes and probabilities per image, to CSV and JSON lines.

    python -m tlexp.predict ckpt=<file.ckpt|.onnx|.pt> input=<file|folder|glob> [top_k=5] [tta=true] [out=predictions]
                            [unknown=false] [explain=true]

Uses the model's own preprocessing and class names. Files that cannot be read are listed, not fatal, unless
none can be read: then nothing is written and the exit status is 2.
`prediction` is the top class, or `unknown` when the image's confidence `score` falls under the threshold its
training run chose on val (unknown=false: always the top class). explain=true (checkpoints): a Grad-CAM overlay
per image, of its top class, in <out>_gradcam/.
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
from tlexp.evaluation.unknown import LABEL
from tlexp.model.inference import Classifier, load_classifier
from tlexp.run.atomic import atomic_open, atomic_path

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
    unknown: bool = True,
    explain: Path | None = None,
) -> list[dict]:
    """One record per path, in order: {path, prediction, score, labels, probs} or {path, error}.

    `prediction` is `unknown` where the model has a threshold, `unknown` is true and the score falls under it;
    `score` is None where no threshold is used. `explain`: a folder for one Grad-CAM overlay per labelled image.
    """
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
                judged = classifier.judge(x, tta, unknown)
                top = judged.probs.topk(k, dim=1)
                for n, ((i, _), values, indices) in enumerate(
                    zip(good, top.values.tolist(), top.indices.tolist(), strict=True)
                ):
                    labels = [classifier.class_names[j] for j in indices]
                    rejected = judged.rejected is not None and bool(judged.rejected[n])
                    records[i] = {
                        "path": str(paths[i]),
                        "prediction": LABEL if rejected else labels[0],
                        "score": None if judged.scores is None else round(float(judged.scores[n]), 6),
                        "labels": labels,
                        "probs": [round(v, 6) for v in values],
                    }
                if explain is not None:
                    write_overlays(
                        classifier, x, top.indices[:, 0], [paths[i] for i, _ in good], [i for i, _ in good], explain
                    )
            bar.update(len(batch))
    return records


def write_overlays(classifier: Classifier, x: torch.Tensor, target, paths: list[Path], index: list[int], folder: Path):
    """explain=true: `<folder>/<index>_<name>.png`, the model's input with the Grad-CAM map of class `target`."""
    from PIL import Image

    from tlexp.evaluation.gradcam import overlays

    shown, _ = overlays(classifier.module, x, classifier.preprocessing, target)
    for image, path, i in zip(shown, paths, index, strict=True):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        with atomic_path(folder / f"{i:05d}_{Path(path).stem}.png") as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")


def out_base(out: Path) -> Path:
    return out.with_suffix("") if out.suffix in (".csv", ".jsonl") else out


def write(records: list[dict], out: Path, k: int) -> tuple[Path, Path]:
    out = out_base(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = Path(f"{out}.csv"), Path(f"{out}.jsonl")
    ranks = [f"{c}_{n}" for n in range(2, k + 1) for c in ("label", "prob")]
    columns = ["path", "prediction", "score", "label", "prob", *ranks, "error"]
    with atomic_open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            pairs = [v for pair in zip(r.get("labels", []), r.get("probs", []), strict=True) for v in pair]
            score = "" if r.get("score") is None else r["score"]
            first = [r["path"], r.get("prediction", ""), score]
            writer.writerow([*first, *pairs, *[""] * (2 * k - len(pairs)), r.get("error", "")])
    with atomic_open(jsonl_path, "w") as f:
        for r in records:
            if "error" in r:
                f.write(json.dumps(r) + "\n")
            else:
                top = [{"label": lab, "prob": p} for lab, p in zip(r["labels"], r["probs"], strict=True)]
                row = {"path": r["path"], "prediction": r["prediction"], "score": r["score"], "top": top}
                f.write(json.dumps(row) + "\n")
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
    explain = explain_folder(cfg, classifier)
    paths = find_inputs(cfg.input)
    k = max(1, min(int(cfg.top_k), len(classifier.class_names)))
    use_unknown = bool(cfg.get("unknown", True))
    records = predict(
        classifier, paths, k, cfg.tta, cfg.batch_size, cfg.num_workers, cfg.progress, use_unknown, explain
    )
    check_labelled(records, cfg.input)
    csv_path, jsonl_path = write(records, Path(cfg.out).expanduser(), k)
    failed = [r for r in records if "error" in r]
    print(f"\n  labelled  {len(records) - len(failed)} of {len(records)} images ({classifier.kind}: {cfg.ckpt})")
    print(f"  unknown   {unknown_said(records, classifier, use_unknown)}")
    if explain is not None:
        print(f"  explained {len(records) - len(failed)} Grad-CAM overlays (top class) in {explain}")
    if failed:
        print(f"  unreadable {len(failed)} (listed with their error in the CSV):")
        for r in failed[:10]:
            print(f"    {r['path']}: {r['error']}")
        if len(failed) > 10:
            print(f"    ... and {len(failed) - 10} more")
    print(f"  written   {csv_path}, {jsonl_path}\n", flush=True)
    return records


def explain_folder(cfg, classifier: Classifier) -> Path | None:
    """explain=true: where the overlays go (`<out>_gradcam/`); only a checkpoint has the gradients for them."""
    if not cfg.get("explain", False):
        return None
    if classifier.module is None:
        raise ConfigError(
            f"explain=true needs a .ckpt checkpoint: Grad-CAM takes gradients, which an exported {classifier.kind} "
            "graph does not give here. Pass ckpt=<the checkpoint it was exported from>, or drop explain=true."
        )
    return Path(f"{out_base(Path(cfg.out).expanduser())}_gradcam")


def unknown_said(records: list[dict], classifier: Classifier, asked: bool) -> str:
    if not asked:
        return "not used (unknown=false): every image gets its top class"
    if not classifier.unknown:
        return "no threshold in this model (trained before tlexp chose one, or exported without it): not used"
    shown = [r for r in records if "error" not in r]
    n = sum(r["prediction"] == LABEL for r in shown)
    u = classifier.unknown
    return f"{n} of {len(shown)} images ({u['score']} score under {u['threshold']:.4g}, chosen on val)"


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_args(sys.argv[1:] if argv is None else argv, "predict", __doc__))


if __name__ == "__main__":
    main()
