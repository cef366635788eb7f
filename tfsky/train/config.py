"""The ``train:`` section, and the whole segmenter config (``name``, ``data``, ``model``, ``train``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from tfsky.data.config import DataConfig
from tfsky.errors import ConfigError
from tfsky.models.losses import LossName
from tfsky.models.precision import StrategyName
from tfsky.models.segmenter import SegmenterModelConfig


@dataclasses.dataclass
class TrainConfig:
    """How to fit a model: optimiser, schedule, stopping, determinism, devices, run folder.

    Args:
        epochs: int. Epochs to train (a resumed run stops at the same total). Defaults to 50.
        batch_size: int. Batch size PER REPLICA; the global batch is this times
            the number of devices of ``strategy``. Defaults to 8.
        learning_rate: float. Initial learning rate. Defaults to 1e-4.
        optimizer: str. ``adam``, ``adamw`` (with ``weight_decay``) or ``sgd``
            (momentum 0.9). Defaults to ``adam``.
        weight_decay: float. Decoupled weight decay for ``adamw``. Defaults to 1e-4.
        loss: str. ``bce_jaccard``, ``dice``, ``focal`` or ``bce`` (categorical
            forms for a softmax head). Defaults to ``bce_jaccard``.
        lr_schedule: str. ``constant``; ``cosine`` (decay to 0 over all steps,
            after ``warmup_epochs`` of linear warm-up); ``plateau`` (multiply by
            ``plateau_factor`` when ``val_loss`` has not improved for
            ``plateau_patience`` epochs). Defaults to ``constant``.
        warmup_epochs: int. Linear warm-up for ``cosine``. Defaults to 0.
        plateau_factor: float. LR multiplier for ``plateau``. Defaults to 0.5.
        plateau_patience: int. Epochs without improvement for ``plateau``. Defaults to 3.
        early_stopping_patience: Optional[int]. Stop when ``val_iou`` has not
            improved for this many epochs. Defaults to None (never).
        seed: Optional[int]. Seeds Python, NumPy and TensorFlow. Defaults to None.
        deterministic: bool. Also make TF ops deterministic (needs ``seed``;
            slower). Defaults to False.
        strategy: str. ``default`` (one device), ``mirrored`` (all local GPUs)
            or ``multi_worker`` (reads TF_CONFIG). Defaults to ``default``.
        steps_per_epoch: Optional[int]. Fixed number of training batches per
            epoch (the data is repeated as needed); None is one pass over the
            training patches. Defaults to None.
        validation_steps: Optional[int]. Validate on N batches only, their
            patches (segmenter) or pairs (translator) spread evenly over the
            whole validation set, the same ones every epoch. Defaults to None (all).
        tensorboard_images: int. Validation images shown with predicted masks
            in TensorBoard each epoch; 0 for none. Defaults to 3.
        runs_root: Path. Runs are written to ``runs_root/<name>/<timestamp>/``.
            Defaults to ``runs``.
    """

    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 1e-4
    loss: LossName = "bce_jaccard"
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_epochs: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stopping_patience: Optional[int] = None
    seed: Optional[int] = None
    deterministic: bool = False
    strategy: StrategyName = "default"
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    tensorboard_images: int = 3
    runs_root: Path = Path("runs")

    def validate(self) -> None:
        positive = ("epochs", "batch_size", "plateau_patience", "early_stopping_patience", "steps_per_epoch",
                    "validation_steps")
        for key in positive:
            _at_least(key, getattr(self, key), 1)
        for key in ("warmup_epochs", "tensorboard_images"):
            _at_least(key, getattr(self, key), 0)
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate", f"must be > 0; got {self.learning_rate}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError("plateau_factor", f"must be between 0 and 1; got {self.plateau_factor}")
        if self.warmup_epochs >= self.epochs and self.lr_schedule == "cosine":
            raise ConfigError("warmup_epochs", f"must be less than epochs ({self.epochs})")
        if self.deterministic and self.seed is None:
            raise ConfigError("deterministic", "needs a seed (set train.seed)")


def _at_least(key: str, value: Optional[int], minimum: int) -> None:
    if value is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum}; got {value}")


@dataclasses.dataclass
class SegmenterConfig:
    """A whole ``tfsky train segmenter`` config file.

    Args:
        name: str. Run name; runs go to ``train.runs_root/<name>/``.
        data: DataConfig. Sources, cache, patches, preprocessing (``data.channels``
            is also the model's input channel count).
        model: SegmenterModelConfig. The network.
        train: TrainConfig. The fit.
    """

    name: str
    data: DataConfig
    model: SegmenterModelConfig = dataclasses.field(default_factory=SegmenterModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("name", f"must be a plain folder name; got {self.name!r}")
        if self.train.tensorboard_images > self.train.batch_size:
            raise ConfigError("train.tensorboard_images", f"must be <= train.batch_size ({self.train.batch_size})")
