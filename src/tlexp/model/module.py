"""The LightningModule: a backbone and a new head, named optimizer groups from the block map, metrics."""

from __future__ import annotations

import logging
from collections import OrderedDict

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassRecall

from tlexp.config.errors import ConfigError

from .backbones import block_map, create_backbone
from .metrics import classification_metrics
from .preprocessing import Preprocessing

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")


class TransferModule(L.LightningModule):
    """Backbone + head, built from plain values so that `load_from_checkpoint` works.

    `backbone` may be passed in already built (the run builder loads it first to fail fast on missing weights),
    with its block map `blocks`; neither is a hyperparameter (both are rebuilt from `model_name` when loading).
    To load a checkpoint, use `load_module`, which skips the weights download.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        weights: str | None = "bundled",
        class_names: list[str] | None = None,
        image_size: int | None = None,
        head_dropout: float = 0.2,
        optimizer: str = "adamw",
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        preprocessing: dict | None = None,
        backbone: nn.Module | None = None,
        blocks: dict[str, list[str]] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "blocks"])
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer '{optimizer}' is not one of {', '.join(OPTIMIZERS)}.")
        if backbone is None:
            backbone, _ = create_backbone(model_name, weights, image_size)
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, num_classes))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # data.balance=weights: a class-weighted training loss (val/test losses stay unweighted, comparable).
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.groups = self._named_groups(blocks or block_map(backbone))
        self.group_names = list(self.groups)
        self._bn_by_group = self._batchnorms_by_group()
        self.frozen_bn_groups: set[str] = set()
        base = classification_metrics(num_classes)
        self.train_metrics = base.clone(prefix="train/")
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        # Per-class recall on the test split: shows what imbalance (and data.balance) does to the small classes.
        self.test_recall = MulticlassRecall(num_classes, average=None)
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._val_correct: list[torch.Tensor] = []  # per val image, in loader order: auto's paired noise

    # ------------------------------------------------------------ groups

    def _named_groups(self, blocks: dict[str, list[str]]) -> OrderedDict[str, list[nn.Parameter]]:
        params = dict(self.named_parameters())
        groups = OrderedDict((name, [params[f"backbone.{n}"] for n in names]) for name, names in blocks.items())
        groups["head"] = list(self.head.parameters())
        return groups

    def _batchnorms_by_group(self) -> dict[str, list[nn.Module]]:
        owner = {id(p): g for g, ps in self.groups.items() for p in ps}
        found: dict[str, list[nn.Module]] = {g: [] for g in self.groups}
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                first = next(module.parameters(recurse=False), None)
                if first is not None:
                    found[owner[id(first)]].append(module)
        return found

    def set_frozen_bn(self, groups: list[str]) -> None:
        """BatchNorm in these groups runs in eval mode: it uses and keeps its running statistics."""
        self.frozen_bn_groups = set(groups)
        self.train(self.training)

    def train(self, mode: bool = True):
        # Lightning calls train() at every epoch start and after validation; frozen BN must stay in eval.
        super().train(mode)
        if mode:
            for g in self.frozen_bn_groups:
                for bn in self._bn_by_group[g]:
                    bn.eval()
        return self

    def audit_groups(self, optimizer, phase, index: int, mode: str) -> list[dict]:
        """Check every trainable parameter sits in exactly one optimizer group; log a table per group."""
        seen: dict[int, str] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    raise RuntimeError(f"parameter in two optimizer groups: {seen[id(p)]} and {group['name']}")
                seen[id(p)] = group["name"]
        orphans = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in seen]
        if orphans:
            raise RuntimeError(f"trainable parameters in no optimizer group: {orphans[:5]}")
        rows = {}
        for group in optimizer.param_groups:  # a block's decay and no-decay groups make one row
            name = group["name"]
            row = rows.setdefault(
                name,
                {
                    "group": name,
                    "trainable_params": 0,
                    "lr": group["lr"],
                    "weight_decay": 0.0,
                    "bn": "n/a"
                    if not self._bn_by_group[name]
                    else ("eval" if name in self.frozen_bn_groups else "train"),
                },
            )
            row["trainable_params"] += sum(p.numel() for p in group["params"]) if name in phase.train else 0
            row["weight_decay"] = max(row["weight_decay"], group["weight_decay"])
        rows = list(rows.values())
        lines = [f"phase {index + 1} '{phase.name}' ({phase.epochs} epochs, freezing by {mode}):"]
        lines += ["  group      trainable        lr   w.decay  BN"]
        lines += [
            f"  {r['group']:<9} {r['trainable_params']:>10,} {r['lr']:>9.2e} {r['weight_decay']:>9.1e}  {r['bn']}"
            for r in rows
        ]
        log.info("\n".join(lines))
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("phases", "\n".join("    " + line for line in lines), self.current_epoch)
        return rows

    def trainable_parameters(self, groups: list[str]) -> int:
        return sum(p.numel() for g in groups for p in self.groups[g])

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def eval_preprocessing(self) -> Preprocessing:
        """What predict/export feed the model: the preprocessing saved at training, else the backbone's own."""
        if self.hparams.get("preprocessing"):
            return Preprocessing.from_dict(dict(self.hparams.preprocessing))
        native = Preprocessing.of_backbone(self.backbone)
        return native.overridden({"image_size": self.hparams.get("image_size")})

    # ------------------------------------------------------------ training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A batch of cached backbone features [N, D] (head-only phases, see features.py) skips the backbone.
        features = x if x.ndim == 2 else self.backbone(x)
        return self.head(features)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        train = stage == "train"
        loss = F.cross_entropy(
            logits,
            y,
            weight=self.class_weights if train else None,
            label_smoothing=self.hparams.label_smoothing if train else 0.0,
        )
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, y)
        if stage == "val":
            self._val_correct.append((logits.argmax(1) == y).cpu())
        if stage == "test":
            self.test_recall.update(logits, y)
            self.test_outputs.append((logits.detach().float().cpu(), y.cpu()))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_validation_epoch_start(self):
        self._val_correct = []

    def val_correct(self) -> torch.Tensor:
        """Per val image of the last validation pass: whether the prediction was right."""
        return torch.cat(self._val_correct)

    def on_test_epoch_start(self):
        self.test_outputs = []  # (logits, labels) per batch, in loader order: the evaluation report reuses them

    def test_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of the last test pass (this process's share of it under DDP)."""
        logits, labels = zip(*self.test_outputs, strict=True)
        return torch.cat(logits), torch.cat(labels)

    def on_test_epoch_end(self):
        recall = self.test_recall.compute()
        self.log_dict({f"test/recall/{name}": r for name, r in zip(self.class_names, recall, strict=True)})
        self.test_recall.reset()

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(-1)

    def configure_optimizers(self):
        # Every group exists from the start, named by block; phases only change lr / weight decay / requires_grad.
        # (Adding groups mid-run breaks schedulers and resume: Lightning #8720, #21901.)
        hp = self.hparams
        groups = [
            {"params": ps, "name": name, "decay": decay, "lr": 0.0, "weight_decay": hp.weight_decay * decay}
            for name, params in self.groups.items()
            for decay, ps in self._split_by_decay(params)
            if ps
        ]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=0.0, momentum=hp.momentum, nesterov=True)
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=0.0)

    def _split_by_decay(self, params: list[nn.Parameter]) -> list[tuple[float, list[nn.Parameter]]]:
        """(1.0, decayed) and (0.0, not decayed) parameters of a group, by timm's `param_groups_weight_decay` rule.

        Norm weights, biases (1-D) and the backbone's `no_weight_decay()` names (ViT's position embedding and
        class token) get no weight decay: decaying them pulls scales and offsets towards 0 for no regularising gain.
        """
        skip = set(getattr(self.backbone, "no_weight_decay", set)())
        exempt = {
            id(p)
            for n, p in self.named_parameters()
            if p.ndim <= 1 or n.endswith(".bias") or n.removeprefix("backbone.") in skip
        }
        return [(1.0, [p for p in params if id(p) not in exempt]), (0.0, [p for p in params if id(p) in exempt])]


def load_module(checkpoint: str, map_location: str = "cpu") -> TransferModule:
    """Load a trained TransferModule; the backbone is built empty, then filled from the checkpoint."""
    return TransferModule.load_from_checkpoint(checkpoint, map_location=map_location, weights="none")
