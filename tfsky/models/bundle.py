"""A trained model file plus the facts needed to use it correctly.

A model is saved as ``NAME.keras`` with a sidecar ``NAME.json`` holding a
`ModelInfo`: the preprocessing it was trained with, its tile size and channel
count, the resolved training config and its metrics. Prediction, export and
serving read the preprocessing from here, so it is never typed twice.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tfsky import __version__
from tfsky.data.masks import SKY_THRESHOLD
from tfsky.data.transforms import Preprocess
from tfsky.errors import InputError
from tfsky.io.atomic import atomic_path, write_json

if TYPE_CHECKING:
    from tfsky.models.precision import InferencePrecision


class ModelKind(str, enum.Enum):
    """What a saved model is, and so which command, exporter and served signatures it takes.

    Resolved from a sidecar by `model_kind` (the one place that decides it). The sidecar does not store
    the kind: it stores the training ``task`` (`TASK_KINDS`), and a cloud model is a ``segmenter`` with two
    classes trained on all-sky sources. The values are what users and ``tfsky client`` call the kinds.
    """

    SEGMENTER = "segmenter"
    CLOUD = "cloud"
    TRANSLATOR = "translator"
    COLORIZER = "colorizer"
    CLASSIFIER = "classifier"

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        """How a user calls this kind, in messages."""
        return _DESCRIPTIONS[self]

    def accepts(self, kind: Optional["ModelKind"]) -> bool:
        """Whether a command that needs a model of this kind takes one of ``kind`` (a cloud model is a segmenter)."""
        return kind is self or (self is ModelKind.SEGMENTER and kind is ModelKind.CLOUD)


TASK_KINDS = {  # the sidecar's ``task`` (what training writes; saved model files hold these) -> kind
    "segmenter": ModelKind.SEGMENTER,  # or CLOUD, see `model_kind`
    "pix2pix": ModelKind.TRANSLATOR,
    "vae": ModelKind.TRANSLATOR,
    "colorize": ModelKind.COLORIZER,
    "classifier": ModelKind.CLASSIFIER,
}
_DESCRIPTIONS = {
    ModelKind.SEGMENTER: "sky segmenter",
    ModelKind.CLOUD: "cloud model (two-class segmenter trained on all-sky frames)",
    ModelKind.TRANSLATOR: "weather translator (pix2pix or vae)",
    ModelKind.COLORIZER: "colorizer (model.kind colorize)",
    ModelKind.CLASSIFIER: "weather classifier",
}


@dataclasses.dataclass
class ModelInfo:
    """What a saved model needs beside its weights.

    Args:
        task: str. What training wrote it as: ``segmenter``, ``pix2pix``, ``vae``, ``colorize`` or
            ``classifier`` (`TASK_KINDS`; the kind, with cloud models told apart, is `kind`).
        preprocess: Preprocess. Normalisation applied to input pixels.
        tile_size: int. Patch size the model was trained on; the default tile for prediction.
        in_channels: int. Input channels the model expects.
        classes: int. Output channels (1 = sigmoid sky probability).
        working_scale: Optional[int]. Short side (px) the model was trained and predicts at;
            None = native resolution (`tfsky.data.scale`).
        threshold: float. Probability at or above which a pixel is the positive class,
            chosen on the validation split after training. Defaults to 0.5.
        chroma_gate: Optional[float]. Colorizers: a frame whose coarse output's mean chroma
            (`tfsky.models.colorize.coarse_chroma`, Lab units) is below this comes out grey (L kept, ab = 0);
            fitted on the training split after training. None (or absent): no gate. Defaults to None.
        bfloat16: Optional[dict]. Whether the model keeps its masks computing in bfloat16, measured on the
            validation split after training (`tfsky.models.precision.bfloat16_verdict`: agreement with
            float32, IoU in each, ``ok``, the CPU): ``precision: auto`` uses bfloat16 only where it is ok.
            None (or absent): not measured, so float32. Defaults to None.
        config: dict. The resolved training config.
        metrics: dict. Best validation metrics.
        tfsky_version: str. Version that wrote the model.
    """

    task: str
    preprocess: Preprocess
    tile_size: int
    in_channels: int = 3
    classes: int = 1
    working_scale: Optional[int] = None
    threshold: float = SKY_THRESHOLD
    chroma_gate: Optional[float] = None
    bfloat16: Optional[dict[str, Any]] = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    tfsky_version: str = __version__

    @property
    def kind(self) -> Optional[ModelKind]:
        """`model_kind` of this sidecar."""
        return model_kind(self)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelInfo":
        data = dict(data)
        data["preprocess"] = Preprocess(**data.get("preprocess", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def info_path(model_path: str | Path) -> Path:
    """The sidecar of ``runs/x/best.keras`` is ``runs/x/best.json``."""
    return Path(model_path).with_suffix(".json")


def save_model(model, path: str | Path, info: ModelInfo) -> None:
    """Save ``model`` to ``path`` (.keras) and its sidecar, each atomically (sidecar first)."""
    path = Path(path)
    write_json(info_path(path), info.to_json())
    with atomic_path(path) as tmp:
        model.save(tmp)


def model_kind(info: ModelInfo) -> Optional[ModelKind]:
    """The kind of the model whose sidecar is ``info``; None for a task this tfsky does not know.

    A ``segmenter`` with two classes trained on all-sky sources (softmax: 0 clear sky, 1 cloud) is a
    cloud model; any other segmenter a sky segmenter.
    """
    kind = TASK_KINDS.get(info.task)
    if kind is ModelKind.SEGMENTER and info.classes == 2 and allsky_sources(info):
        return ModelKind.CLOUD
    return kind


def allsky_sources(info: Optional[ModelInfo]) -> list[dict]:
    """The ``allsky_folder`` source configs a model was trained on (from its sidecar)."""
    sources = ((info.config or {}) if info else {}).get("data", {}).get("sources", [])
    return [source for source in sources if source.get("kind") == "allsky_folder"]


def kind_of(path: str | Path) -> Optional[ModelKind]:
    """`model_kind` of the model file at ``path``; None when it or its sidecar is missing or unreadable.

    For commands that dispatch on the kind: the command a None goes to reports the problem (`load_info`).
    """
    try:
        return load_info(path).kind
    except InputError:
        return None


def require_kind(info: ModelInfo, path: str | Path, kind: ModelKind | str) -> None:
    """Raise `InputError` unless the model at ``path`` is of ``kind`` (`ModelKind.accepts`), saying what it is.

    Every command that loads a model checks this first: a translator run as a
    segmenter would otherwise "work" and write meaningless masks.
    """
    kind = ModelKind(kind)
    if not kind.accepts(info.kind):
        raise InputError(path, f"is a {info.task} model, not a {kind.description}")


def load_info(path: str | Path, kind: ModelKind | str | None = None) -> ModelInfo:
    """Read the sidecar of a model file (of ``kind``, see `require_kind`, when given).

    A missing model file or sidecar, a broken sidecar, or a model of another kind, is an `InputError`.
    """
    if not Path(path).is_file():  # before the sidecar: a mistyped model path is reported as such
        raise InputError(path, "model file not found")
    sidecar = info_path(path)
    if not sidecar.is_file():
        raise InputError(sidecar, "model sidecar not found (it is written beside the .keras file by tfsky train)")
    try:
        info = ModelInfo.from_json(json.loads(sidecar.read_text()))
    except (ValueError, TypeError) as err:
        raise InputError(sidecar, f"not a valid tfsky model sidecar ({err})") from None
    if kind is not None:
        require_kind(info, path, kind)
    return info


def load_model(path: str | Path, precision: InferencePrecision = "auto", kind: ModelKind | str | None = None):
    """Load a tfsky model file for inference: returns ``(keras_model, ModelInfo)``.

    ``precision``: a mixed-precision model is rebuilt in float32 on a machine
    without a GPU (``auto``; bfloat16 on a CPU with a bfloat16 unit when the
    sidecar's ``bfloat16`` verdict is ok), always (``float32``) or never
    (``as_trained``); see `tfsky.models.precision.for_inference`. ``kind``: the kind of model the
    caller needs (`require_kind`), checked before the weights are read.
    """
    from tfsky.models.precision import for_inference

    model, info = read_model(path, kind)
    return for_inference(model, precision, info.bfloat16), info


def read_model(path: str | Path, kind: ModelKind | str | None = None):
    """`load_model` without the precision step: the model as it was saved, and its sidecar.

    For callers that check the rest of their input (tile, data) before `for_inference` decides the
    precision and says so: a bad input is then one line, not the precision note and an error.
    """
    import tensorflow as tf

    path = Path(path)
    info = load_info(path, kind)
    try:
        model = (
            _load_archive(path)
            if zipfile.is_zipfile(path)
            else tf.keras.models.load_model(path, compile=False, custom_objects=custom_objects())
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise InputError(path, f"cannot load model ({str(err).splitlines()[0]})") from None
    return model, info


def _load_archive(path: Path):
    """`tf.keras.models.load_model` of a ``.keras`` archive, uncompiled, with its weights read into memory first.

    tf-keras hands h5py the weights as a zip member, and on Python 3.11 every backward seek in a member
    re-reads it from its start: a ResNet34 U-Net's 98 MB took 17 s to load at every start
    (`tfsky predict`, each Ray worker), 5 s from memory (`scripts/bench_encode.py --model`). Archives
    with assets go through tf-keras itself.
    """
    import tensorflow as tf
    from tf_keras.src.saving import saving_lib
    from tf_keras.src.saving.serialization_lib import ObjectSharingScope, deserialize_keras_object

    with zipfile.ZipFile(path) as archive:
        if len(archive.namelist()) > 3:  # metadata, config and weights; more are assets
            return tf.keras.models.load_model(path, compile=False, custom_objects=custom_objects())
        config = json.loads(archive.read("config.json"))
        weights = io.BytesIO(archive.read("model.weights.h5"))
    config["compile_config"] = None
    v3_before = getattr(saving_lib._SAVING_V3_ENABLED, "value", False)
    saving_lib._SAVING_V3_ENABLED.value = True  # as tf-keras's own loader sets it
    try:
        with ObjectSharingScope():
            model = deserialize_keras_object(config, custom_objects(), safe_mode=True)
        store = saving_lib.H5IOStore(weights, mode="r")
        try:
            saving_lib._load_state(
                model, weights_store=store, assets_store=None, inner_path="", visited_trackables=set()
            )
        finally:
            store.close()
    finally:
        saving_lib._SAVING_V3_ENABLED.value = v3_before
    return model


def custom_objects() -> dict[str, Any]:
    """Custom layers and models tfsky defines, for loading saved files."""
    from tfsky.models.colorize import HintChannels
    from tfsky.models.vae import LatentSample

    return {"tfsky>LatentSample": LatentSample, "tfsky>HintChannels": HintChannels}
