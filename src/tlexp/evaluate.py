"""`python -m tlexp.evaluate`: the evaluation report (tlexp.evaluation.report) of any checkpoint on any dataset:
python -m tlexp.evaluate ckpt=<file.ckpt> [dataset=<name> dataset.root=...] [split=test] [out=<dir>]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tlexp.config.cli import parse_args, run_dir_of
from tlexp.config.errors import ConfigError, DataError, exit_on_user_error
from tlexp.model.inference import load_trained
from tlexp.run.resume import RUN_CONFIG

from .data import TransferDataModule
from .evaluation.intervals import Interval
from .evaluation.report import BINS, evaluate

log = logging.getLogger("tlexp")


def describe(summary: dict, out: Path) -> str:
    lines = [
        f"  {summary['split']} images      {summary['images']} ({summary['misclassified']} wrong)",
        f"  accuracy         {Interval(**summary['intervals']['acc'])}",
        f"  macro F1         {Interval(**summary['intervals']['f1'])}",
        f"  ECE ({BINS} bins)    {summary['ece']:.4f}   NLL {summary['nll']:.4f}",
    ]
    if "temperature" in summary:
        lines.append(
            f"  temperature {summary['temperature']:.3f} (fitted on val): "
            f"ECE {summary['ece_scaled']:.4f}, NLL {summary['nll_scaled']:.4f}"
        )
    if "temperature_skipped" in summary:
        lines.append(f"  temperature scaling skipped: {summary['temperature_skipped']}")
    lines.append(f"  weakest classes  {', '.join(summary['worst_classes_by_recall'])}")
    lines.append(f"  report           {out}")
    return "\n".join(lines)


def dataset_config(cfg, ckpt: Path) -> dict:
    """The dataset asked for on the command line, else the one the checkpoint's run was trained on."""
    if cfg.get("dataset") is not None:
        return OmegaConf.to_container(cfg.dataset, resolve=True)
    saved = run_dir_of(ckpt) / RUN_CONFIG  # tlexp's own record: Hydra's files are rewritten by any start in the dir
    if saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved).dataset, resolve=True)
    raise ConfigError(
        f"no dataset given and no run config at {saved}. Say which images to evaluate on, e.g. "
        "`dataset=fashion_mnist` or `dataset=imagefolder dataset.root=/path/to/images`."
    )


def run(cfg) -> dict:
    ckpt = Path(cfg.ckpt).expanduser()
    module = load_trained(ckpt)
    pre = module.eval_preprocessing()
    datamodule = TransferDataModule(
        dataset=dataset_config(cfg, ckpt),
        **pre.as_dict(),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
    )
    datamodule.setup()
    if datamodule.class_names != module.class_names:
        raise DataError(
            f"the checkpoint was trained on classes {module.class_names}, but the dataset has "
            f"{datamodule.class_names}. Evaluate on a dataset with the same class folders."
        )
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split}: choose train, val or test.")
    out = Path(cfg.out) if cfg.get("out") else run_dir_of(ckpt) / f"evaluation_{datamodule.cfg['name']}_{ckpt.stem}"
    summary = evaluate(module, datamodule, out, None, cfg.split, cfg.report.temperature, cfg.report.top_losses)
    print("\n" + describe(summary, out) + "\n", flush=True)
    return summary


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_args(sys.argv[1:] if argv is None else argv, "evaluate", __doc__))


if __name__ == "__main__":
    main()
