"""The preprocessing a model expects: one typed value that travels with it, as timm's pretrained config does.

Built from the backbone's own pretrained config; the dataset config or the user may override it. It goes with the
model into the DataModule, the checkpoint (as plain values), metrics.json, predict and the export's model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875  # eval: resize to image_size / crop_pct, then centre-crop image_size

    def __post_init__(self):  # plain types, whatever they came from (YAML lists, JSON, timm tuples)
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        object.__setattr__(self, "interpolation", str(self.interpolation))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    @classmethod
    def of_backbone(cls, model: nn.Module) -> Preprocessing:
        """What the backbone was pretrained with (timm's `resolve_model_data_config`)."""
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        return cls(
            image_size=cfg["input_size"][-1],
            mean=cfg["mean"],
            std=cfg["std"],
            interpolation=cfg.get("interpolation", "bilinear"),
            crop_pct=cfg.get("crop_pct", 0.875),
        )

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**values)

    def overridden(self, values: dict) -> Preprocessing:
        """This preprocessing with the values that are set (not None) replaced."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def as_dict(self) -> dict:
        """Plain values (lists, not tuples): the checkpoint's hyperparameters, JSON, DataModule arguments."""
        values = asdict(self)
        return {**values, "mean": list(values["mean"]), "std": list(values["std"])}

    def eval_transform(self):
        from tlexp.data.transforms import eval_transform

        return eval_transform(self.image_size, self.mean, self.std, self.interpolation, self.crop_pct)
