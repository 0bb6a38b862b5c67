"""The label audit's verdicts: confident learning (cleanlab) on out-of-fold probabilities, its CSV files and picture.

`find_suspects` asks cleanlab which given labels the out-of-fold probabilities contradict with confidence
(`cleanlab.filter.find_label_issues`, confident learning: Northcutt et al. 2021) and scores every image's label
(`cleanlab.rank.get_label_quality_scores`: 0..1, low = likely wrong). The writers put the verdicts where a user
reads them: `audit.csv` (the flagged images, most suspect first), `out_of_fold.csv` (every image's probabilities),
`exclude.txt` (the flagged ids, one a line: `data.exclude=` reads it) and `suspects.png`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlexp.run.atomic import write_text

from .figures import grid_figure, save

# The choices (audit.filter_by, audit.rank_by) are cleanlab's; config/validate.py's table lists the ones tlexp offers.
FILTER_BY, RANK_BY = "prune_by_noise_rate", "self_confidence"  # cleanlab's defaults
AUDIT_COLUMNS = ["rank", "path", "split", "given", "suggested", "score", "p_given", "p_suggested", "fold"]


@dataclass(frozen=True)
class Suspects:
    """cleanlab's verdicts on N images."""

    order: np.ndarray  # the flagged images' indices, most suspect (lowest score) first
    scores: np.ndarray  # [N] label quality of every image: 0..1, lower = more likely mislabelled
    suggested: np.ndarray  # [N] the likeliest class other than the given one


def find_suspects(labels, probs, filter_by: str = FILTER_BY, rank_by: str = RANK_BY) -> Suspects:
    """Confident learning on out-of-sample probabilities [N, C]: the flagged images, ranked, and every score."""
    from cleanlab.filter import find_label_issues  # imported here: scikit-learn takes a second to load
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    # n_jobs=1: cleanlab's process pool costs more than it saves on a few thousand images, and forks a process
    # that holds torch's threads.
    order = find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by, n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method=rank_by)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    return Suspects(np.asarray(order, dtype=np.int64), np.asarray(scores, dtype=np.float64), others.argmax(1))


def sig(x: float) -> float:
    """4 significant digits: a score of 3e-05 stays 3e-05 (ranks apart from 1e-07), not 0.0."""
    return float(f"{float(x):.4g}")


def fold_text(folds: np.ndarray) -> str:
    """An image's fold: `3`, or one per repeat, `3/0/4`."""
    return "/".join(str(int(f)) for f in folds)


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def audit_rows(ids, splits, labels, probs, folds, names, found: Suspects) -> list[dict]:
    """One row per flagged image, most suspect first (the columns of AUDIT_COLUMNS)."""
    rows = []
    for rank, i in enumerate(found.order, 1):
        given, other = int(labels[i]), int(found.suggested[i])
        rows.append({
            "rank": rank,
            "path": ids[i],
            "split": splits[i],
            "given": names[given],
            "suggested": names[other],
            "score": sig(found.scores[i]),
            "p_given": sig(probs[i, given]),
            "p_suggested": sig(probs[i, other]),
            "fold": fold_text(folds[:, i]),
        })  # fmt: skip
    return rows


def write_audit(out: Path, rows: list[dict]) -> Path:
    return write_text(out / "audit.csv", _csv(AUDIT_COLUMNS, [[r[c] for c in AUDIT_COLUMNS] for r in rows]))


def write_out_of_fold(out: Path, ids, splits, labels, probs, folds, names, found: Suspects) -> Path:
    """Every train + val image: its given label, fold(s), the probe's prediction, its score, p per class."""
    header = ["path", "split", "label", "fold", "predicted", "score", *(f"p_{n}" for n in names)]
    predicted = np.asarray(probs).argmax(1)
    rows = [
        [ids[i], splits[i], names[int(labels[i])], fold_text(folds[:, i]), names[int(predicted[i])],
         sig(found.scores[i]), *(sig(p) for p in probs[i])]
        for i in range(len(ids))
    ]  # fmt: skip
    return write_text(out / "out_of_fold.csv", _csv(header, rows))


def write_exclude(out: Path, rows: list[dict]) -> Path:
    """The flagged images' ids, one a line, most suspect first: the list to review, then `data.exclude=`."""
    return write_text(out / "exclude.txt", "".join(f"{r['path']}\n" for r in rows))


def short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def tail(text: str, width: int = 24) -> str:
    """The end of a name, where a file's number or an in-memory image's index is."""
    return text if len(text) <= width else "…" + text[1 - width :]


def suspects_picture(path: Path, images: list, rows: list[dict], columns: int = 6) -> Path:
    """The top suspects as stored (no transform), each captioned `#rank given -> suggested` and its score."""
    captions = [
        f"#{r['rank']} {short(r['given'], 12)} -> {short(r['suggested'], 12)}\nscore {r['score']:.2g}\n"
        + tail(Path(r["path"]).name)  # a file's name; an in-memory image's id
        for r in rows
    ]
    title = "suspected label errors: given -> suggested (label quality score; lower = more suspect)"
    fig = grid_figure(images, captions, columns=columns, title=title if images else None)
    return save(fig, path)
