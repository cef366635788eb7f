"""The sky segmenter: a segmentation-models encoder/decoder with a float32 head.

One builder covers U-Net, FPN and Linknet over any segmentation-models
backbone. The network ends without activation and a separate
``Activation(..., dtype="float32", name="probabilities")`` layer, because
segmentation-models' own head computes in float16 under the mixed policy and
the loss then goes NaN.

Input: every segmenter takes [0, 1] pixels. Its first layer, ``encoder_input``
(a fixed 1x1 convolution in float32), maps them to the range the backbone's
ImageNet weights were trained on (segmentation-models' per-backbone
preprocessing: [-1, 1] for ``mobilenetv2``, 0-255 for the ResNets, BGR minus
the ImageNet mean for VGG...). It lives in the graph, so training, predict,
evaluate, export and the serving signatures all apply exactly the same.

Encoder weights: a Keras ``.h5`` weights file of the bare backbone
(``include_top=False``), the same format as the classification-models ImageNet
"notop" files, so those can be copied in and used directly on an air-gapped
box; or ``imagenet``, which downloads that file once into the Keras cache
(``$KERAS_HOME/models``, default ``~/.keras/models``), checked by its MD5, as
segmentation-models itself does. ``TFSKY_WEIGHTS_MIRROR`` replaces the download
location with a mirror holding the same file names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from pathlib import Path
from typing import Literal, Optional

import h5py
import numpy as np
import tensorflow as tf

from tfsky.errors import ConfigError, InputError
from tfsky.io.atomic import atomic_path
from tfsky.models.precision import Precision

Architecture = Literal["unet", "fpn", "linknet"]
IMAGENET = "imagenet"  # encoder_weights value that downloads the published ImageNet backbone
ENCODER_INPUT = "encoder_input"  # the layer that maps [0, 1] pixels to the backbone's expected input


@dataclasses.dataclass
class SegmenterModelConfig:
    """The ``model:`` section of a segmenter config.

    Args:
        architecture: str. ``unet``, ``fpn`` or ``linknet``. Defaults to ``unet``.
        backbone: str. Any segmentation-models backbone (``resnet18``,
            ``resnet34``, ``efficientnetb0``...). Defaults to ``resnet34``.
        classes: int. 1 gives a sigmoid sky probability; more gives a softmax
            over classes (e.g. cloud / sky / ground). Defaults to 1.
        encoder_weights: str or None. ``imagenet`` (downloaded once, see the
            module docstring), a local ``.h5`` backbone weights file, or None for
            random weights. Defaults to None.
        encoder_freeze: bool. Keep encoder weights fixed (BatchNorm still
            adapts). Defaults to False.
        encoder_batchnorm: str. ``train``: the encoder's batch norms learn and
            update their moving statistics like every other layer; ``frozen``:
            they keep the statistics and scales of the loaded encoder weights and
            normalise with them in training too (Keras' fine-tuning recipe: a
            pretrained encoder's statistics, slowly dragged by 0.999 momentum,
            lag its changing weights and make validation swing). Defaults to
            ``train``.
        decoder_filters: tuple of int. Filters per decoder stage for unet and
            linknet (five stages, deepest first); for fpn the first value is the
            pyramid width. Tiny configs shrink it, e.g. ``(32, 16, 8, 8, 4)``.
            Defaults to ``(256, 128, 64, 32, 16)``.
        precision: str. ``auto`` (mixed_float16 on GPU, mixed_bfloat16 on a CPU with a bfloat16 unit, float32 on other CPUs),
            ``float32``, ``mixed_float16`` or ``mixed_bfloat16``. Defaults to ``auto``.
        jit_compile: bool. Compile train and eval steps with XLA. XLA has no
            gradient kernel for nearest-neighbour resizing, so with this flag the
            decoder's 2x upsampling is bilinear instead (see
            `use_bilinear_upsampling`). Defaults to False.

    Input channels are not set here: they come from ``data.channels``.
    """

    architecture: Architecture = "unet"
    backbone: str = "resnet34"
    classes: int = 1
    encoder_weights: Optional[str] = None
    encoder_freeze: bool = False
    encoder_batchnorm: Literal["train", "frozen"] = "train"
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16)
    precision: Precision = "auto"
    jit_compile: bool = False

    def validate(self) -> None:
        names = segmentation_models().Backbones.models_names()
        if self.backbone not in names:
            raise ConfigError("backbone", f"unknown backbone {self.backbone!r} (known: {', '.join(names)})")
        if self.classes < 1:
            raise ConfigError("classes", f"must be >= 1; got {self.classes}")
        if not self.decoder_filters or min(self.decoder_filters) < 1:
            raise ConfigError("decoder_filters", "must be a non-empty list of positive integers")
        check_encoder_weights(self.encoder_weights, self.backbone)


@functools.cache
def segmentation_models():
    """Import segmentation-models without the banner it prints to stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        import segmentation_models as sm
    return sm


def build_segmenter(cfg: SegmenterModelConfig, in_channels: int) -> tf.keras.Model:
    """Build the segmenter (uncompiled) under the current global dtype policy.

    Args:
        cfg: SegmenterModelConfig. Architecture, backbone, head and encoder weights.
        in_channels: int. Input channels (``data.channels``: 3 for LDR and
            log-HDR; 1 and 4 work too).

    Returns:
        A Keras model mapping ``[B, H, W, in_channels]`` (H, W divisible by 32)
        to float32 probabilities ``[B, H, W, classes]``, named
        ``<architecture>_<backbone>`` with the same layer names on every build.
    """
    base = with_encoder_input(_build_base(cfg, in_channels), cfg.backbone, in_channels)
    if cfg.jit_compile:
        use_bilinear_upsampling(base)
    activation = "sigmoid" if cfg.classes == 1 else "softmax"
    probabilities = tf.keras.layers.Activation(activation, dtype="float32", name="probabilities")(base.output)
    model = tf.keras.Model(base.input, probabilities, name=f"{cfg.architecture}_{cfg.backbone}")
    if cfg.encoder_weights is not None:
        load_start_weights(model, cfg.encoder_weights, cfg.backbone)
    if cfg.encoder_batchnorm == "frozen":
        freeze_encoder_batchnorm(model, cfg.backbone)
    return model


def check_encoder_weights(weights: Optional[str], backbone: str) -> None:
    """The config check of ``encoder_weights``: ``imagenet`` must be published for ``backbone``, a file must exist.

    Raises:
        ConfigError: it is neither (key ``encoder_weights``).
    """
    if weights == IMAGENET:
        imagenet_entry(backbone)
    elif weights is not None and not Path(weights).is_file():
        raise ConfigError("encoder_weights", f"weights file not found: {weights}")


def load_start_weights(model: tf.keras.Model, weights: str | Path, backbone: str) -> None:
    """Start ``model``'s encoder from ``weights``: ``imagenet`` (downloaded once) or a backbone ``.h5`` file."""
    load_encoder_weights(model, download_imagenet_encoder(backbone) if weights == IMAGENET else weights, backbone)


def freeze_encoder_batchnorm(model: tf.keras.Model, backbone: str) -> None:
    """Fix the encoder's batch norms: no scale/offset updates, and inference-mode statistics in training too.

    A non-trainable `BatchNormalization` runs in inference mode in Keras 2, and
    the flag is saved with the model, so a resumed run keeps it.
    """
    for layer in encoder_layers(model, backbone):
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False


def encoder_layers(model: tf.keras.Model, backbone: str) -> list[tf.keras.layers.Layer]:
    """The layers of a segmenter (or classifier) ``model`` that belong to its ``backbone``."""
    names = _backbone_layer_names(backbone, model.input_shape[-1])
    return [layer for layer in model.layers if layer.name in names]


@functools.cache
def _backbone_layer_names(backbone: str, in_channels: int) -> frozenset[str]:
    return frozenset(layer.name for layer in _bare_backbone(backbone, in_channels).layers)


_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# segmentation-models builds these backbones from Keras applications, which publish no checksum
KERAS_APPLICATIONS_IMAGENET = {
    "mobilenet": "mobilenet/mobilenet_1_0_224_tf_no_top.h5",
    "mobilenetv2": "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}


def imagenet_entry(backbone: str) -> dict:
    """The record (``name``, ``url``, ``md5``) of the ImageNet "notop" file of ``backbone``.

    From classification-models for the ResNets, VGGs...; from Keras applications (no md5) for the MobileNets.

    Raises:
        ConfigError: the backbone has no ImageNet weights (key ``encoder_weights``).
    """
    from classification_models.weights import WEIGHTS_COLLECTION

    for entry in WEIGHTS_COLLECTION:
        if (entry["model"], entry["dataset"], entry["include_top"]) == (backbone, "imagenet", False):
            return entry
    if backbone in KERAS_APPLICATIONS_IMAGENET:
        path = KERAS_APPLICATIONS_IMAGENET[backbone]
        return {"name": path.rsplit("/", 1)[1], "url": _KERAS_APPLICATIONS + path, "md5": None}
    raise ConfigError("encoder_weights", f"no ImageNet weights are published for backbone {backbone!r}")


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded files (``models/`` holds the ImageNet encoders): ``$KERAS_HOME`` or ~/.keras."""
    return Path(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")))


def download_imagenet_encoder(backbone: str) -> Path:
    """The local path of the ImageNet "notop" weights of ``backbone``, downloaded on first use.

    Raises:
        ConfigError: the download failed (offline, say); the message names the
            file to fetch elsewhere and the local-file alternative.
    """
    entry = imagenet_entry(backbone)
    mirror = os.environ.get("TFSKY_WEIGHTS_MIRROR")
    url = f"{mirror.rstrip('/')}/{entry['name']}" if mirror else entry["url"]
    try:
        cache = keras_cache_dir()
        os.makedirs(cache, exist_ok=True)  # get_file falls back to /tmp/.keras when the folder is missing
        return Path(
            tf.keras.utils.get_file(
                entry["name"], url, cache_dir=str(cache), cache_subdir="models", md5_hash=entry["md5"]
            )
        )
    except Exception as err:  # get_file raises bare Exceptions wrapping URL, HTTP and checksum errors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            "model.encoder_weights",
            f"cannot download the ImageNet {backbone} weights from {url} ({reason}); without internet, copy "
            f"{entry['name']} here and set model.encoder_weights to that local .h5 file",
        ) from None


def _build_base(cfg: SegmenterModelConfig, in_channels: int) -> tf.keras.Model:
    sm = segmentation_models()
    common = dict(
        input_shape=(None, None, in_channels),
        classes=cfg.classes,
        activation=None,
        encoder_weights=None,
        encoder_freeze=cfg.encoder_freeze,
    )
    tf.keras.backend.reset_uids()  # auto-generated layer names restart at zero: deterministic names
    if cfg.architecture == "unet":
        return sm.Unet(cfg.backbone, decoder_filters=cfg.decoder_filters, **common)
    if cfg.architecture == "linknet":
        return sm.Linknet(cfg.backbone, decoder_filters=cfg.decoder_filters, **common)
    return sm.FPN(cfg.backbone, pyramid_block_filters=cfg.decoder_filters[0], **common)


def encoder_input_affine(backbone: str, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel ``[1, 1, in, in]`` and bias of the 1x1 map from [0, 1] pixels to ``backbone``'s input.

    Read off segmentation-models' own preprocessing function (which takes 0-255
    RGB) by probing it with black and with each primary colour, so any backbone it
    knows is covered, channel reordering included. For 1 or 4 input channels
    (grey, log-HDR with alpha...) the RGB map has no meaning per channel: its
    mean gain and offset apply to every channel alike.
    """
    preprocess = segmentation_models().get_preprocessing(backbone)
    probes = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).astype(np.float32).reshape(4, 1, 1, 3)
    out = np.asarray(preprocess(probes.copy()), dtype=np.float64).reshape(4, 3)
    bias = out[0]
    matrix = out[1:] - bias  # row i: the output of primary colour i, minus black's
    if in_channels == 3:
        return matrix.reshape(1, 1, 3, 3).astype(np.float32), bias.astype(np.float32)
    gain = matrix.sum(axis=1).mean()
    kernel = gain * np.eye(in_channels).reshape(1, 1, in_channels, in_channels)
    return kernel.astype(np.float32), np.full(in_channels, bias.mean(), np.float32)


def with_encoder_input(base: tf.keras.Model, backbone: str, in_channels: int) -> tf.keras.Model:
    """``base`` (freshly built, untrained) with the fixed `ENCODER_INPUT` layer between its input and its first layers.

    Segmenters and weather classifiers both go through it, so a backbone sees
    the input its weights expect whichever head it has.

    Rebuilt from the functional config so the layers stay flat (a nested model
    would hide the encoder's layer names from `load_encoder_weights`).
    """
    config = base.get_config()
    input_name = config["input_layers"][0][0]
    for layer in config["layers"]:
        layer["inbound_nodes"] = _renamed_inbound(layer["inbound_nodes"], input_name, ENCODER_INPUT)
    conv = tf.keras.layers.Conv2D(in_channels, 1, name=ENCODER_INPUT, trainable=False, dtype="float32")
    config["layers"].insert(
        1,
        {
            "class_name": "Conv2D",
            "config": conv.get_config(),
            "name": ENCODER_INPUT,
            "inbound_nodes": [[[input_name, 0, 0, {}]]],
        },
    )
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(False):  # our own in-process config: backbones such as seresnet hold Lambda layers
        model = tf.keras.Model.from_config(config)
    model.get_layer(ENCODER_INPUT).set_weights(list(encoder_input_affine(backbone, in_channels)))
    return model


def _renamed_inbound(nodes, old: str, new: str):
    """Inbound-node lists of a layer config with references to layer ``old`` pointed at ``new``."""
    if isinstance(nodes, list):
        if len(nodes) == 4 and nodes[0] == old and isinstance(nodes[1], int):
            return [new, *nodes[1:]]
        return [_renamed_inbound(node, old, new) for node in nodes]
    return nodes


def use_bilinear_upsampling(model: tf.keras.Model) -> None:
    """Switch every nearest-neighbour `UpSampling2D` of ``model`` to bilinear, in place.

    ``ResizeNearestNeighborGrad`` has no XLA kernel, so a segmentation-models
    decoder cannot be trained with ``jit_compile`` as built; the bilinear
    gradient is supported. The layers read ``interpolation`` when called and
    save it in their config, so the change holds for training and saved files.
    """
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.UpSampling2D) and layer.interpolation == "nearest":
            layer.interpolation = "bilinear"


def _bare_backbone(backbone: str, in_channels: int) -> tf.keras.Model:
    """The backbone alone, with the layer names it has inside a freshly built segmenter."""
    sm = segmentation_models()
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)  # as sm.Unet calls it
    tf.keras.backend.reset_uids()
    return get_backbone(backbone, input_shape=(None, None, in_channels), weights=None, include_top=False)


def save_encoder_weights(model: tf.keras.Model, path: str | Path, backbone: str) -> None:
    """Write the encoder part of ``model`` as a backbone ``.h5`` weights file, atomically.

    Args:
        model: a model from `build_segmenter` (or loaded from a segmenter file).
        path: destination ``.h5`` file.
        backbone: the backbone name the model was built with.
    """
    encoder = _bare_backbone(backbone, model.input_shape[-1])
    for layer in encoder.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    with atomic_path(path) as tmp:
        encoder.save_weights(str(tmp))


def load_encoder_weights(model: tf.keras.Model, path: str | Path, backbone: str) -> None:
    """Copy backbone weights from an ``.h5`` file into the encoder of ``model``.

    Raises:
        InputError: the file is missing, not a weights file, or made for
            another backbone or channel count (the message says which).
    """
    path = Path(path)
    encoder = _bare_backbone(backbone, model.input_shape[-1])
    _check_weight_shapes(encoder, path, backbone)
    encoder.load_weights(str(path))
    for layer in encoder.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def _check_weight_shapes(encoder: tf.keras.Model, path: Path, backbone: str) -> None:
    """Compare the file's weight shapes with ``encoder``'s, layer by layer, before loading."""
    found = _h5_weight_shapes(path)
    expected = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in encoder.layers if layer.weights}
    for problem, names in (("lacks", set(expected) - set(found)), ("has extra", set(found) - set(expected))):
        if names:
            listed = ", ".join(sorted(names)[:3])
            raise InputError(path, f"not {backbone} encoder weights: the file {problem} layers ({listed}...)")
    for name, shapes in expected.items():  # in layer order: a channel mismatch shows at the first layer
        if found[name] != shapes:
            raise InputError(path, _mismatch(name, shapes[0], found[name][0], encoder.input_shape[-1]))


def _mismatch(layer: str, expected: tuple, found: tuple, channels: int) -> str:
    found_channels = found[0] if len(found) == 1 else found[-2]
    if found_channels != channels:
        return f"encoder weights are for {found_channels} input channels, the model has {channels} (layer '{layer}')"
    return f"layer '{layer}': expected weights of shape {expected}, found {found}"


def _h5_weight_shapes(path: Path) -> dict[str, list[tuple]]:
    """Layer name -> weight shapes in a Keras ``.h5`` weights file."""
    if not path.is_file():
        raise InputError(path, "encoder weights file not found")
    shapes = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            for layer_name in map(_text, root.attrs["layer_names"]):
                layer = root[layer_name]
                weights = [tuple(layer[_text(w)].shape) for w in layer.attrs["weight_names"]]
                if weights:
                    shapes[layer_name] = weights
    except (OSError, KeyError) as err:
        raise InputError(path, f"not a Keras .h5 weights file ({err})") from None
    return shapes


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
