"""The training stage's schemas: the ``train:`` section and the whole segmenter, translator and classifier files.

Every schema a ``tfsky train ...`` config file is checked against lives here; the sections they
are built from live next to the code that uses them (``data``, ``streams``, ``pairs``, ``model``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional, TypeVar

from tfsky.config import from_dict
from tfsky.data.colour import ColourSourcesConfig
from tfsky.data.config import DataConfig
from tfsky.data.labelled import ClassifierDataConfig
from tfsky.data.pairs import PairDataConfig, PairsConfig
from tfsky.data.streams import StreamsConfig
from tfsky.errors import ConfigError, InputError
from tfsky.models.bundle import ModelInfo, info_path
from tfsky.models.classifier import ClassifierModelConfig
from tfsky.models.colorize import ColorizeConfig
from tfsky.models.losses import LossName
from tfsky.models.pix2pix import Pix2PixConfig
from tfsky.models.precision import Precision, StrategyName
from tfsky.models.segmenter import SegmenterModelConfig
from tfsky.models.vae import VAEConfig

T = TypeVar("T")


@dataclasses.dataclass
class TrainConfig:
    """How to fit any model: length, batch, learning rate, stopping, determinism, devices, run folder.

    The translators' ``train:`` section is exactly this; the segmenter's adds its optimiser, loss and
    schedule (`SegmenterTrainConfig`), so a translator config setting those is an unknown key.

    Args:
        epochs: int. Epochs to train (a resumed run stops at the same total). Defaults to 50.
        batch_size: int. Batch size PER REPLICA; the global batch is this times
            the number of devices of ``strategy``. Defaults to 8.
        learning_rate: float. Initial learning rate. Defaults to 1e-4.
        early_stopping_patience: Optional[int]. Stop when the monitored validation
            metric has not improved for this many epochs. Defaults to None (never).
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
        tensorboard_images: int. Validation images shown with predictions
            in TensorBoard each epoch; 0 for none. Defaults to 3.
        runs_root: Path. Runs are written to ``runs_root/<name>/<timestamp>/``.
            Defaults to ``runs``.
    """

    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-4
    early_stopping_patience: Optional[int] = None
    seed: Optional[int] = None
    deterministic: bool = False
    strategy: StrategyName = "default"
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    tensorboard_images: int = 3
    runs_root: Path = Path("runs")

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "early_stopping_patience", "steps_per_epoch", "validation_steps"):
            _at_least(key, getattr(self, key), 1)
        _at_least("tensorboard_images", self.tensorboard_images, 0)
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate", f"must be > 0; got {self.learning_rate}")
        if self.deterministic and self.seed is None:
            raise ConfigError("deterministic", "needs a seed (set train.seed)")


@dataclasses.dataclass
class SegmenterTrainConfig(TrainConfig):
    """The segmenter's ``train:`` section: `TrainConfig` plus the optimiser, loss and schedule of ``compile``.

    Args:
        optimizer: str. ``adam``, ``adamw`` (with ``weight_decay``) or ``sgd``
            (momentum 0.9). Defaults to ``adam``.
        weight_decay: float. Decoupled weight decay for ``adamw``. Defaults to 1e-4.
        loss: str. ``bce_jaccard``, ``bce_lovasz``, ``dice``, ``focal`` or ``bce`` (categorical
            forms for a softmax head). Defaults to ``bce_jaccard``.
        lr_schedule: str. ``constant``; ``cosine`` (decay to 0 over all steps,
            after ``warmup_epochs`` of linear warm-up); ``plateau`` (multiply by
            ``plateau_factor`` when ``val_loss`` has not improved for
            ``plateau_patience`` epochs). Defaults to ``constant``.
        warmup_epochs: int. Linear warm-up for ``cosine``. Defaults to 0.
        plateau_factor: float. LR multiplier for ``plateau``. Defaults to 0.5.
        plateau_patience: int. Epochs without improvement for ``plateau``. Defaults to 3.
        encoder_lr_factor: float. The encoder learns at this fraction of the
            learning rate (a pretrained encoder under a fresh decoder; see
            `tfsky.train.encoder_rate`). Defaults to 1.0.
        decoder_first_epochs: int. Epochs at the start in which only the
            decoder learns (the encoder is paused). Defaults to 0.
        threshold: Optional[float]. The cut stored with the model, on P(sky) (or a two-class cloud
            model's P(cloud)). None chooses the best-IoU cut on the validation batches; a number fixes
            it (the validation split holds the training sources, and a cut chosen there can fit them
            and cost IoU on photos from elsewhere: docs/results/segmenter-generalisation.md). The
            validation's best cut is recorded either way (``metrics["val_best_threshold"]``).
            Defaults to None.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 1e-4
    loss: LossName = "bce_jaccard"
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_epochs: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    encoder_lr_factor: float = 1.0
    decoder_first_epochs: int = 0
    threshold: Optional[float] = None

    def validate(self) -> None:
        super().validate()
        _at_least("decoder_first_epochs", self.decoder_first_epochs, 0)
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(
                "threshold", f"must be between 0 and 1 (exclusive), or null to choose it; got {self.threshold}"
            )
        if not 0 < self.encoder_lr_factor <= 1:
            raise ConfigError("encoder_lr_factor", f"must be in (0, 1]; got {self.encoder_lr_factor}")
        if self.decoder_first_epochs >= self.epochs:
            raise ConfigError("decoder_first_epochs", f"must be less than epochs ({self.epochs})")
        _at_least("plateau_patience", self.plateau_patience, 1)
        _at_least("warmup_epochs", self.warmup_epochs, 0)
        if not 0 < self.plateau_factor < 1:
            raise ConfigError("plateau_factor", f"must be between 0 and 1; got {self.plateau_factor}")
        if self.warmup_epochs >= self.epochs and self.lr_schedule == "cosine":
            raise ConfigError("warmup_epochs", f"must be less than epochs ({self.epochs})")


def _at_least(key: str, value: Optional[int], minimum: int) -> None:
    if value is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum}; got {value}")


def check_run_name(name: str) -> None:
    """Runs go to ``runs_root/<name>/``: the name must be one plain, visible folder name."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError("name", f"must be a plain folder name; got {name!r}")


@dataclasses.dataclass
class SegmenterConfig:
    """A whole ``tfsky train segmenter`` config file (also what ``tfsky data prepare`` checks).

    Args:
        name: str. Run name; runs go to ``train.runs_root/<name>/``.
        data: DataConfig. Sources, cache, patches, preprocessing (``data.channels``
            is also the model's input channel count).
        model: SegmenterModelConfig. The network.
        train: SegmenterTrainConfig. The fit.
    """

    name: str
    data: DataConfig
    model: SegmenterModelConfig = dataclasses.field(default_factory=SegmenterModelConfig)
    train: SegmenterTrainConfig = dataclasses.field(default_factory=SegmenterTrainConfig)

    def validate(self) -> None:
        check_run_name(self.name)
        if self.train.tensorboard_images > self.train.batch_size:
            raise ConfigError("train.tensorboard_images", f"must be <= train.batch_size ({self.train.batch_size})")
        if self.model.classes == 1 and any(source.kind == "allsky_folder" for source in self.data.sources):
            raise ConfigError(
                "model.classes",
                "all-sky sources have ignored pixels, which only a softmax head "
                "leaves out: use classes: 2 (0 clear sky, 1 cloud)",
            )


@dataclasses.dataclass
class TranslatorModelConfig:
    """The translator's ``model:`` section: which translator, its settings, numeric precision.

    Args:
        kind: str. ``pix2pix``, ``vae`` or ``colorize`` (grey -> colour, `tfsky.train.colorize`).
            Defaults to ``pix2pix``.
        precision: str. ``auto`` (mixed_float16 on GPU, mixed_bfloat16 on a CPU with a bfloat16 unit, float32 on other CPUs), ``float32``,
            ``mixed_float16`` or ``mixed_bfloat16``. Defaults to ``auto``.
        pix2pix: Pix2PixConfig. Used when ``kind`` is pix2pix.
        vae: VAEConfig. Used when ``kind`` is vae.
        colorize: ColorizeConfig. Used when ``kind`` is colorize.
    """

    kind: Literal["pix2pix", "vae", "colorize"] = "pix2pix"
    precision: Precision = "auto"
    pix2pix: Pix2PixConfig = dataclasses.field(default_factory=Pix2PixConfig)
    vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    colorize: ColorizeConfig = dataclasses.field(default_factory=ColorizeConfig)

    @property
    def depth(self) -> int:
        depths = {"pix2pix": self.pix2pix.depth, "vae": self.vae.depth, "colorize": self.colorize.refine_depth}
        return depths[self.kind]

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: 2**depth of the network."""
        return 2**self.depth


@dataclasses.dataclass
class TranslatorConfig:
    """A whole ``tfsky train translator`` config file (``streams`` and ``pairs`` are also read by
    ``tfsky streams validate`` / ``pairs``).

    Args:
        name: str. Run name; runs go to ``train.runs_root/<name>/``.
        streams: StreamsConfig. Where the camera streams are and how frames are validated.
        pairs: PairsConfig. The condition rule and the pairs file.
        colour: ColourSourcesConfig. ``kind: colorize`` only: the images (no labels needed) and their
            split by source; ``streams`` and ``pairs`` are not used then.
        data: PairDataConfig. Resize / crop / flip of the pairs (of the colour frames for colorize:
            ``crop_size`` is the refinement's training crop).
        model: TranslatorModelConfig. The network.
        train: TrainConfig. The fit (``learning_rate`` 2e-4 and ``batch_size`` 1 as in pix2pix;
            the translators' own train steps use Adam, so there is no optimiser, loss or schedule).
    """

    name: str
    streams: StreamsConfig = dataclasses.field(default_factory=StreamsConfig)
    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)
    colour: ColourSourcesConfig = dataclasses.field(default_factory=ColourSourcesConfig)
    data: PairDataConfig = dataclasses.field(default_factory=PairDataConfig)
    model: TranslatorModelConfig = dataclasses.field(default_factory=TranslatorModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=1, learning_rate=2e-4))

    def validate(self) -> None:
        check_run_name(self.name)
        multiple = self.model.size_multiple
        if self.data.crop_size % multiple:
            raise ConfigError(
                "data.crop_size", f"must be a multiple of 2**depth = {multiple} for model.{self.model.kind}"
            )


@dataclasses.dataclass
class ClassifierConfig:
    """A whole ``tfsky train classifier`` config file.

    Args:
        name: str. Run name; runs go to ``train.runs_root/<name>/``.
        data: ClassifierDataConfig. Labelled sources, class map, input size, split.
        model: ClassifierModelConfig. Backbone and head.
        train: SegmenterTrainConfig. The fit: optimiser and schedule as for the segmenter; early
            stopping watches ``val_accuracy``; ``loss`` must stay unset (it is cross-entropy).
    """

    name: str
    data: ClassifierDataConfig
    model: ClassifierModelConfig = dataclasses.field(default_factory=ClassifierModelConfig)
    train: SegmenterTrainConfig = dataclasses.field(default_factory=SegmenterTrainConfig)

    def validate(self) -> None:
        check_run_name(self.name)
        if self.train.loss != SegmenterTrainConfig.loss:
            raise ConfigError("train.loss", "the classifier's loss is cross-entropy; remove the key")


def trained_config(info: ModelInfo, schema: type[T], path: str | Path) -> T:
    """The typed training config a saved model records in its sidecar (``info.config``).

    Types are checked; values are not (they were when the model was trained, and files they name need
    not exist where the model is used), and keys an older tfsky recorded that no longer exist are ignored.

    Raises:
        InputError: the sidecar's config does not fit ``schema`` (a model of another kind or tfsky version).
    """
    try:
        return from_dict(schema, info.config, recorded=True)
    except ConfigError as err:
        raise InputError(info_path(path), f"the recorded training config does not load ({err})") from None
