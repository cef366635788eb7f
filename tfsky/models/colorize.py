"""Colorization in CIELAB (after "Recolor"): a coarse generator and a full-resolution refinement network.

* Generator (`build_coarse_generator`): the frame's L squeezed to ``generator_size`` (e.g. 224)
  -> ab at a quarter of that (56). Low-level ResNet features (conv -> batch norm -> ReLU, residual
  blocks), two more stride-2 levels for global context, upsampled back to 1/4 with skips.
* Refinement (`build_refiner`): full-resolution L plus the coarse ab upsampled to full resolution
  (the "hints") -> full-resolution ab: a small fully convolutional U-Net that predicts a
  correction of the hints, so it runs tile by tile through `tfsky.tiling` on frames of any size.

Units are `tfsky.data.colour`'s model units (L and ab about [-1, 1]).

`ColorizerTrainer` trains both from ``((small_l, crop_l, box), (coarse_ab, crop_ab))`` batches
(`tfsky.data.colour.crop_example`): the coarse ab is upsampled over exactly the crop with
``crop_and_resize``, which is what full-frame upsampling followed by cropping gives. Losses:
L1, Huber or L2 on both outputs; optionally each pixel weighted by the rarity of its true ab bin
(class rebalancing, Zhang et al. 2016: ``w ~ 1 / ((1 - lambda) p(bin) + lambda / Q)`` with
``lambda = 1 - rebalance``, mean 1
over the training prior, so rare saturated colours are not averaged to grey); optionally a
PatchGAN term (`tfsky.models.pix2pix.build_patchgan` on [L, Lab]) and a VGG perceptual term on
RGB. ``schedule: joint`` trains both networks together; ``staged`` trains the generator alone
for ``coarse_epochs`` epochs, then the refinement alone on the frozen generator's hints.

The saved inference model (`inference_model`) is one Keras model holding both networks as
layers named ``generator`` and ``refiner``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import tensorflow as tf

from tfsky.data.colour import AB_SCALE, ab_bin_index, lab_to_rgb, model_to_lab
from tfsky.errors import ConfigError
from tfsky.models.pix2pix import Pix2PixConfig, adversarial_loss, build_patchgan, loss_scale_wrapped, replica_share

COARSE_FACTOR = 4  # the generator's output is 1/4 of its input side
LOG_L2_FLOOR = (1 / AB_SCALE) ** 2  # 1 ab unit squared, in model units: a perfect image is not -inf


@dataclasses.dataclass
class ColorizeConfig:
    """The ``model:`` section for ``kind: colorize``.

    Args:
        generator_size: int. Side of the squeezed L the generator sees (multiple of 16). Defaults to 224.
        generator_filters: int. Filters of the generator's first level (doubled per level, capped at 8x).
            Defaults to 32.
        refine_filters: int. Filters of the refinement network's first level. Defaults to 16.
        refine_depth: int. Stride-2 levels of the refinement U-Net; tiles must be multiples of 2**depth.
            Defaults to 2.
        loss: str. ``l1``, ``huber`` (delta 0.1 in model units, ~11 ab), ``l2`` (the conditional mean:
            cautious colours) or ``log_l2``: the mean over images of log(their mean squared ab error + 1 ab²),
            i.e. minus their mean PSNR up to constants (L is exact, so ab error is all the colour error):
            a tint on a nearly colourless photo costs as much as a whole colourful one gains, as it does
            in the mean PSNR it is judged by. Defaults to ``l1``.
        coarse_weight: float. Weight of the coarse output's loss. Defaults to 1.
        rebalance: float. Strength of the ab-bin rebalancing in [0, 1]: 0 off, 1 full inverse frequency;
            Zhang et al.'s lambda is ``1 - rebalance`` (0.5 in the paper). Defaults to 0.
        ab_bin: float. Side of the ab bins in Lab units. Defaults to 10.
        gan_weight: float. PatchGAN term on the refined output (0 = off). Defaults to 0.
        disc_filters: int. Filters of the discriminator's first layer. Defaults to 32.
        perceptual_weight: float. VGG19 perceptual term on RGB (needs ``vgg_weights``). Defaults to 0.
        vgg_weights: Optional[Path]. LOCAL VGG19 no-top weights. Defaults to None.
        schedule: str. ``joint`` or ``staged`` (see the module docstring). Defaults to ``joint``.
        coarse_epochs: int. Generator-only epochs of ``staged``. Defaults to 5.
        chroma_gate: bool. After training, fit the chroma gate on the training split
            (`tfsky.train.chroma_gate.fit_chroma_gate`): frames whose coarse output is nearly colourless
            (`coarse_chroma`) come out grey, which beats any tint on PSNR there. Defaults to True.
    """

    generator_size: int = 224
    generator_filters: int = 32
    refine_filters: int = 16
    refine_depth: int = 2
    loss: Literal["l1", "huber", "l2", "log_l2"] = "l1"
    coarse_weight: float = 1.0
    rebalance: float = 0.0
    ab_bin: float = 10.0
    gan_weight: float = 0.0
    disc_filters: int = 32
    perceptual_weight: float = 0.0
    vgg_weights: Optional[Path] = None
    schedule: Literal["joint", "staged"] = "joint"
    coarse_epochs: int = 5
    chroma_gate: bool = True

    def validate(self) -> None:
        if self.generator_size < 16 or self.generator_size % 16:
            raise ConfigError("generator_size", f"must be a multiple of 16, >= 16; got {self.generator_size}")
        for key in ("generator_filters", "refine_filters", "refine_depth", "disc_filters", "coarse_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1; got {getattr(self, key)}")
        if not 0 <= self.rebalance <= 1:
            raise ConfigError("rebalance", f"must be in [0, 1]; got {self.rebalance}")
        if self.ab_bin <= 0:
            raise ConfigError("ab_bin", f"must be > 0; got {self.ab_bin}")
        if self.perceptual_weight > 0 and self.vgg_weights is None:
            raise ConfigError("vgg_weights", "is needed when perceptual_weight > 0 (a local VGG19 weights file)")

    @property
    def size_multiple(self) -> int:
        """Refinement tiles (and training crops) must be multiples of this."""
        return 2**self.refine_depth


# --- networks ------------------------------------------------------------------------------------


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    """Conv 3x3 -> batch norm -> ReLU (batch norm before the ReLU, as Recolor)."""
    x = tf.keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return tf.keras.layers.ReLU(name=f"{name}_relu")(x)


def _residual(x, filters: int, name: str):
    """A ResNet basic block (two conv-BN, identity shortcut, ReLU after the sum)."""
    y = _conv_bn_relu(x, filters, f"{name}_a")
    y = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = tf.keras.layers.BatchNormalization(name=f"{name}_b_bn")(y)
    return tf.keras.layers.ReLU(name=f"{name}_out")(tf.keras.layers.Add(name=f"{name}_add")([x, y]))


@tf.keras.utils.register_keras_serializable(package="tfsky")
class HintChannels(tf.keras.layers.Layer):
    """The ab hints of the refinement's input: channels 1 and 2 of [L, a, b]."""

    def call(self, inputs):
        return inputs[..., 1:]


def _ab_head(x, name: str):
    x = tf.keras.layers.Conv2D(2, 3, padding="same", name=f"{name}_conv")(x)
    return tf.keras.layers.Activation("tanh", dtype="float32", name=name)(x)


def build_coarse_generator(cfg: ColorizeConfig) -> tf.keras.Model:
    """L [B, g, g, 1] -> coarse ab [B, g/4, g/4, 2] (model units)."""
    widths = [min(cfg.generator_filters * 2**i, cfg.generator_filters * 8) for i in range(4)]
    inputs = tf.keras.Input((cfg.generator_size, cfg.generator_size, 1), name="small_l")
    x = _conv_bn_relu(inputs, widths[0], "g_stem", strides=2)  # 1/2
    x = _residual(x, widths[0], "g_res1")
    x = _conv_bn_relu(x, widths[1], "g_down2", strides=2)  # 1/4
    quarter = _residual(x, widths[1], "g_res2")
    x = _conv_bn_relu(quarter, widths[2], "g_down3", strides=2)  # 1/8
    eighth = _residual(x, widths[2], "g_res3")
    x = _conv_bn_relu(eighth, widths[3], "g_down4", strides=2)  # 1/16: global context
    x = _residual(x, widths[3], "g_res4")
    x = tf.keras.layers.UpSampling2D(interpolation="bilinear", name="g_up3")(x)
    x = _conv_bn_relu(tf.keras.layers.Concatenate(name="g_skip3")([x, eighth]), widths[2], "g_fuse3")
    x = tf.keras.layers.UpSampling2D(interpolation="bilinear", name="g_up2")(x)
    x = _conv_bn_relu(tf.keras.layers.Concatenate(name="g_skip2")([x, quarter]), widths[1], "g_fuse2")
    return tf.keras.Model(inputs, _ab_head(x, "coarse_ab"), name="generator")


def build_refiner(cfg: ColorizeConfig) -> tf.keras.Model:
    """[L, upsampled coarse ab] [B, t, t, 3] -> refined ab [B, t, t, 2] (t a multiple of 2**refine_depth).

    The output is the hints plus a learnt correction, unbounded (`tfsky.data.colour.lab_to_rgb` clips
    to the sRGB gamut).
    """
    inputs = tf.keras.Input((None, None, 3), name="l_and_hints")
    hints = HintChannels(name="hints")(inputs)
    x = _conv_bn_relu(inputs, cfg.refine_filters, "r_in")
    skips = []
    for level in range(cfg.refine_depth):
        skips.append(x)
        x = _conv_bn_relu(x, cfg.refine_filters * 2 ** (level + 1), f"r_down{level}", strides=2)
    x = _residual(x, cfg.refine_filters * 2**cfg.refine_depth, "r_mid")
    for level in reversed(range(cfg.refine_depth)):
        x = tf.keras.layers.UpSampling2D(interpolation="bilinear", name=f"r_up{level}")(x)
        x = _conv_bn_relu(
            tf.keras.layers.Concatenate(name=f"r_skip{level}")([x, skips[level]]),
            cfg.refine_filters * 2**level,
            f"r_fuse{level}",
        )
    delta = tf.keras.layers.Conv2D(2, 3, padding="same", name="r_delta")(x)
    refined = tf.keras.layers.Add(name="r_sum")([hints, delta])
    outputs = tf.keras.layers.Activation("linear", dtype="float32", name="refined_ab")(refined)
    return tf.keras.Model(inputs, outputs, name="refiner")


def upsample_hints(coarse_ab: tf.Tensor, boxes: tf.Tensor, size) -> tf.Tensor:
    """The coarse ab over each ``box`` ([y0, x0, y1, x1] fractions of the frame) at ``size`` pixels.

    Exactly a bilinear half-pixel resize of the whole coarse map to the frame's size (edges clamped)
    followed by the crop, without the full-size map: the training crops, the tiled full frames
    (row bands) and the serving signature all upsample with this.
    """
    coarse_ab = tf.cast(coarse_ab, tf.float32)
    side = tf.cast(tf.shape(coarse_ab)[1:3], tf.float32)
    out = tf.cast(tf.convert_to_tensor(size, tf.int32), tf.float32)
    starts, ends = boxes[:, :2] * side, boxes[:, 2:] * side
    first = starts + 0.5 * (ends - starts) / out - 0.5  # centre of the first output pixel, coarse pixels
    last = first + (ends - starts) * (out - 1) / out
    padded = tf.pad(coarse_ab, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")  # clamp at the borders
    sample = tf.concat([(first + 1) / (side + 1), (last + 1) / (side + 1)], axis=-1)
    return tf.image.crop_and_resize(padded, sample, tf.range(tf.shape(boxes)[0]), tf.cast(out, tf.int32))


def coarse_chroma(coarse_ab) -> tf.Tensor:
    """[B] the chroma gate's statistic: mean chroma sqrt(a² + b²), in Lab units, of the generator's coarse ab.

    Computed before the refinement, so a gated frame never runs it. On the colorize_cpu training split it
    told the photos where grey beats the model apart better than the coarse image's colourfulness did.
    """
    ab = tf.cast(coarse_ab, tf.float32) * AB_SCALE
    return tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(ab), axis=-1)), axis=[1, 2])


def inference_model(generator: tf.keras.Model, refiner: tf.keras.Model) -> tf.keras.Model:
    """One Keras model holding both networks (layers ``generator`` and ``refiner``), saved as best.keras."""
    small = tf.keras.Input(generator.input_shape[1:], name="small_l")
    full = tf.keras.Input((None, None, 3), name="l_and_hints")
    return tf.keras.Model([small, full], [generator(small), refiner(full)], name="colorizer")


def split_inference_model(model: tf.keras.Model) -> tuple[tf.keras.Model, tf.keras.Model]:
    """``(generator, refiner)`` of a saved colorizer."""
    return model.get_layer("generator"), model.get_layer("refiner")


# --- training ------------------------------------------------------------------------------------


def pixel_loss(target, output, loss: str, bin_weights=None, ab_bin: float = 10.0) -> tf.Tensor:
    """The ab loss ``loss`` (`ColorizeConfig.loss`) of [B, H, W, 2] outputs, optionally ab-bin rebalanced."""
    target, output = tf.cast(target, tf.float32), tf.cast(output, tf.float32)
    if loss == "huber":
        error = tf.reduce_mean(tf.keras.losses.Huber(0.1, reduction="none")(target[..., None], output[..., None]), -1)
    elif loss in ("l2", "log_l2"):
        error = tf.reduce_mean(tf.square(target - output), axis=-1)
    else:
        error = tf.reduce_mean(tf.abs(target - output), axis=-1)
    if bin_weights is not None:
        error *= tf.gather(bin_weights, ab_bin_index(target * AB_SCALE, ab_bin))
    if loss == "log_l2":  # per image, then averaged: the mean PSNR's own weighting
        return tf.reduce_mean(tf.math.log(tf.reduce_mean(error, axis=[1, 2]) + LOG_L2_FLOOR))
    return tf.reduce_mean(error)


def rebalance_weights(prior: np.ndarray, mix: float) -> np.ndarray:
    """Per-bin weights ``1 / ((1 - mix) p + mix / Q)`` scaled to mean 1 under ``p`` (Zhang et al. 2016)."""
    weights = 1.0 / ((1 - mix) * prior + mix / prior.size)
    return (weights / np.sum(prior * weights)).astype(np.float32)


class ColorizerTrainer(tf.keras.Model):
    """Generator + refinement (+ optional discriminator) trained by ``fit``; logs the losses and ``ab_l1``.

    Args:
        generator, refiner: the two networks. discriminator: Optional PatchGAN on ([L]*3, Lab).
        cfg: ColorizeConfig. Loss settings.
        bin_weights: Optional[np.ndarray]. Per-ab-bin weights (`rebalance_weights`) or None.
        perceptual: Optional callable ``(a, b) -> scalar`` on RGB in [-1, 1].
    """

    def __init__(
        self, generator, refiner, cfg: ColorizeConfig, discriminator=None, bin_weights=None, perceptual=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.generator, self.refiner, self.discriminator = generator, refiner, discriminator
        self.cfg, self.perceptual = cfg, perceptual
        self.bin_weights = None if bin_weights is None else tf.constant(bin_weights)
        self.stage = tf.Variable(0, trainable=False, dtype=tf.int32, name="stage")  # staged: 0 coarse, 1 refine
        names = ["loss", "coarse", "refined", "ab_l1"] + (["gan", "d_loss"] if discriminator is not None else [])
        names += ["perceptual"] if perceptual is not None else []
        self.trackers = {name: tf.keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer, d_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.d_optimizer = loss_scale_wrapped(d_optimizer) if d_optimizer is not None else None

    def call(self, inputs, training=False):
        small_l, crop_l, boxes = inputs
        coarse = self.generator(small_l, training=training)
        hints = upsample_hints(coarse, boxes, tf.shape(crop_l)[1:3])
        if self.cfg.schedule == "staged":
            hints = tf.stop_gradient(hints)
        return coarse, self.refiner(tf.concat([crop_l, hints], axis=-1), training=training)

    def _pixel_loss(self, target, output):
        return pixel_loss(target, output, self.cfg.loss, self.bin_weights, self.cfg.ab_bin)

    def _step_losses(self, data, training: bool):
        (small_l, crop_l, boxes), (coarse_target, crop_target) = data
        coarse, refined = self((small_l, crop_l, boxes), training=training)
        losses = {"coarse": self._pixel_loss(coarse_target, coarse), "refined": self._pixel_loss(crop_target, refined)}
        losses["ab_l1"] = tf.reduce_mean(tf.abs(tf.cast(crop_target, tf.float32) - refined)) * AB_SCALE
        refine_loss = losses["refined"]
        if self.discriminator is not None:
            grey = tf.repeat(crop_l, 3, axis=-1)
            real_logits = self.discriminator([grey, tf.concat([crop_l, crop_target], -1)], training=training)
            fake_logits = self.discriminator([grey, tf.concat([crop_l, refined], -1)], training=training)
            losses["gan"] = adversarial_loss(fake_logits, real=True)
            losses["d_loss"] = 0.5 * (adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False))
            refine_loss += self.cfg.gan_weight * losses["gan"]
        if self.perceptual is not None:
            as_rgb = lambda ab: lab_to_rgb(model_to_lab(crop_l, ab)) * 2 - 1  # noqa: E731
            losses["perceptual"] = self.perceptual(as_rgb(crop_target), as_rgb(refined))
            refine_loss += self.cfg.perceptual_weight * losses["perceptual"]
        if self.cfg.schedule == "staged":
            losses["loss"] = tf.where(self.stage == 0, losses["coarse"], refine_loss)
        else:
            losses["loss"] = self.cfg.coarse_weight * losses["coarse"] + refine_loss
        return losses

    def _track(self, losses):
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        with tf.GradientTape(persistent=True) as tape:
            losses = self._step_losses(data, training=True)
            share = replica_share(losses["loss"])
            d_share = replica_share(losses["d_loss"]) if self.discriminator is not None else None
        variables = self.generator.trainable_variables + self.refiner.trainable_variables
        self.optimizer.minimize(share, variables, tape=tape)
        if self.discriminator is not None:
            assert self.d_optimizer is not None  # build_colorizer compiles one with the discriminator
            self.d_optimizer.minimize(d_share, self.discriminator.trainable_variables, tape=tape)
        del tape
        return self._track(losses)

    def test_step(self, data):
        return self._track(self._step_losses(data, training=False))


class StageSchedule(tf.keras.callbacks.Callback):
    """``staged``: stage 0 (generator) for the first ``coarse_epochs`` epochs, then 1 (refinement).

    Set from the epoch number at each epoch's start, so a resumed run is in the right stage.
    """

    def __init__(self, coarse_epochs: int):
        super().__init__()
        self.coarse_epochs = coarse_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.stage.assign(0 if epoch < self.coarse_epochs else 1)


def build_colorizer(
    cfg: ColorizeConfig, learning_rate: float, bin_prior: Optional[np.ndarray] = None
) -> ColorizerTrainer:
    """A compiled `ColorizerTrainer` (Adam; the discriminator's own Adam when ``gan_weight > 0``)."""
    perceptual = None
    if cfg.perceptual_weight > 0:
        from tfsky.models.vgg_perceptual import VGGPerceptualLoss

        assert cfg.vgg_weights is not None  # ColorizeConfig.validate
        perceptual = VGGPerceptualLoss(cfg.vgg_weights)
    discriminator = None
    if cfg.gan_weight > 0:
        discriminator = build_patchgan(Pix2PixConfig(disc_filters=cfg.disc_filters, norm="batch"), channels=3)
    weights = rebalance_weights(bin_prior, 1 - cfg.rebalance) if cfg.rebalance > 0 and bin_prior is not None else None
    model = ColorizerTrainer(build_coarse_generator(cfg), build_refiner(cfg), cfg, discriminator, weights, perceptual)
    model.compile(
        tf.keras.optimizers.Adam(learning_rate),
        tf.keras.optimizers.Adam(learning_rate, beta_1=0.5) if discriminator is not None else None,
    )
    return model
