"""pix2pix (Isola et al. 2017) for weather translation: U-Net generator, PatchGAN discriminator.

`Pix2Pix` is a `tf.keras.Model` whose ``train_step`` updates both networks
(each with its own Adam, 2e-4 / beta_1 0.5 as in the paper), so ``fit``,
callbacks, `BackupAndRestore` checkpoints, mixed precision and distribution
strategies work as for any Keras model. Batches are ``((source,
mask), target)`` from `tfsky.data.pairs.make_pair_dataset`, images in [-1, 1].

Generator loss: ``gan_weight * GAN + l1_weight * L1_sky + perceptual_weight * VGG``.
``L1_sky`` is the sky-weighted L1 (`weighted_l1`): pixels of the camera sky
mask weigh ``sky_weight``, the rest 1 (the sky is what changes between
weathers); with ``sky_weight = 1`` it is the plain L1. The discriminator loss
is halved, as in the paper, to slow it relative to the generator. The
reported ``l1`` metric is always the plain, unweighted L1 in [-1, 1] units.

Only the generator is needed for inference; it is a plain functional model
(`build_unet_generator`), saved on its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import tensorflow as tf

from tfsky.errors import ConfigError

Norm = Literal["batch", "instance"]


@dataclasses.dataclass
class Pix2PixConfig:
    """The ``model:`` section for ``kind: pix2pix``.

    Args:
        depth: int. Down-sampling steps of the U-Net; 8 takes 256 px to 1x1. Input sides must be
            multiples of 2**depth. Defaults to 8.
        base_filters: int. Filters of the first generator layer, doubled per level. Defaults to 64.
        max_filters: int. Cap on generator filters. Defaults to 512.
        norm: str. ``batch`` or ``instance`` (GroupNormalization with one group per channel). Defaults to ``batch``.
        dropout: float. Dropout of the 3 innermost decoder blocks. Defaults to 0.5.
        disc_layers: int. Stride-2 layers of the PatchGAN; 3 gives the 70x70 receptive field. Defaults to 3.
        disc_filters: int. Filters of the first discriminator layer. Defaults to 64.
        l1_weight: float. Lambda of the L1 term (100 in the paper; 10 was much worse). Defaults to 100.
        gan_weight: float. Weight of the adversarial term. Defaults to 1.
        sky_weight: float. L1 weight of sky pixels (camera mask); others weigh 1. Defaults to 1.
        perceptual_weight: float. Weight of the VGG19 perceptual loss; > 0 needs ``vgg_weights``. Defaults to 0.
        vgg_weights: Optional[Path]. LOCAL VGG19 (no top) weights file; nothing is downloaded. Defaults to None.
        beta_1: float. Adam beta_1 of both optimizers. Defaults to 0.5.
    """

    depth: int = 8
    base_filters: int = 64
    max_filters: int = 512
    norm: Norm = "batch"
    dropout: float = 0.5
    disc_layers: int = 3
    disc_filters: int = 64
    l1_weight: float = 100.0
    gan_weight: float = 1.0
    sky_weight: float = 1.0
    perceptual_weight: float = 0.0
    vgg_weights: Optional[Path] = None
    beta_1: float = 0.5

    def validate(self) -> None:
        for key in ("depth", "base_filters", "max_filters", "disc_layers", "disc_filters"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1; got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout}")
        if self.sky_weight <= 0:
            raise ConfigError("sky_weight", f"must be > 0; got {self.sky_weight}")
        if self.perceptual_weight > 0 and self.vgg_weights is None:
            raise ConfigError("vgg_weights", "is needed when perceptual_weight > 0 (a local VGG19 weights file)")


# --- building blocks (shared with the VAE) ------------------------------------------------------


def norm_layer(kind: Norm, name: str) -> tf.keras.layers.Layer:
    """Batch norm, or instance norm as core Keras ``GroupNormalization(groups=-1)``."""
    if kind == "instance":
        return tf.keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)
    return tf.keras.layers.BatchNormalization(name=name)


def down_block(x, filters: int, norm: Optional[Norm], name: str):
    """Conv 4x4 stride 2 -> norm (optional) -> LeakyReLU(0.2): halves the resolution."""
    x = tf.keras.layers.Conv2D(
        filters, 4, strides=2, padding="same", use_bias=norm is None, kernel_initializer=_init(), name=f"{name}_conv"
    )(x)
    if norm is not None:
        x = norm_layer(norm, f"{name}_norm")(x)
    return tf.keras.layers.LeakyReLU(0.2, name=f"{name}_act")(x)


def up_block(x, filters: int, norm: Norm, dropout: float, name: str):
    """Transposed conv 4x4 stride 2 -> norm -> dropout (optional) -> ReLU: doubles the resolution."""
    x = tf.keras.layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_init(), name=f"{name}_conv"
    )(x)
    x = norm_layer(norm, f"{name}_norm")(x)
    if dropout > 0:
        x = tf.keras.layers.Dropout(dropout, name=f"{name}_drop")(x)
    return tf.keras.layers.ReLU(name=f"{name}_act")(x)


def tanh_head(x, channels: int, name: str):
    """Last transposed conv to ``channels`` and a float32 tanh (safe under mixed precision)."""
    x = tf.keras.layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_init(), name=f"{name}_conv"
    )(x)
    return tf.keras.layers.Activation("tanh", dtype="float32", name=name)(x)


def _init() -> tf.keras.initializers.Initializer:
    """N(0, 0.02) weights as in the paper (a fresh initializer per layer, so layers differ)."""
    return tf.keras.initializers.RandomNormal(0.0, 0.02)


# --- networks ------------------------------------------------------------------------------------


def build_unet_generator(cfg: Pix2PixConfig, channels: int = 3) -> tf.keras.Model:
    """The U-Net generator: [B, H, W, C] in [-1, 1] -> [B, H, W, C] in [-1, 1] (H, W multiples of 2**depth).

    Encoder levels have ``min(base * 2**i, max)`` filters; the first level
    and the innermost one (1x1 at 256 px, where instance norm would zero
    everything) have no normalisation, as in the reference implementation.
    Each decoder level is concatenated with the encoder level of the same size.
    """
    inputs = tf.keras.Input((None, None, channels), name="source")
    filters = [min(cfg.base_filters * 2**i, cfg.max_filters) for i in range(cfg.depth)]
    x, skips = inputs, []
    for level, width in enumerate(filters):
        inner = level in (0, cfg.depth - 1)
        x = down_block(x, width, None if inner else cfg.norm, f"down{level}")
        skips.append(x)
    for step, level in enumerate(reversed(range(cfg.depth - 1))):
        x = up_block(x, filters[level], cfg.norm, cfg.dropout if step < 3 else 0.0, f"up{level}")
        x = tf.keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
    outputs = tanh_head(x, channels, "translated")
    return tf.keras.Model(inputs, outputs, name="generator")


def build_patchgan(cfg: Pix2PixConfig, channels: int = 3) -> tf.keras.Model:
    """The conditional PatchGAN: ``[source, image]`` -> [B, h, w, 1] real/fake logits (float32).

    ``disc_layers`` 4x4 stride-2 convs, one 4x4 stride-1 conv and the 4x4
    stride-1 logit conv; with 3 stride-2 layers each logit sees 70x70 pixels
    (`receptive_field`).
    """
    source = tf.keras.Input((None, None, channels), name="source")
    image = tf.keras.Input((None, None, channels), name="image")
    x = tf.keras.layers.Concatenate(name="pair")([source, image])
    for level in range(cfg.disc_layers):
        width = cfg.disc_filters * min(2**level, 8)
        x = down_block(x, width, None if level == 0 else cfg.norm, f"disc{level}")
    width = cfg.disc_filters * min(2**cfg.disc_layers, 8)
    x = tf.keras.layers.Conv2D(
        width, 4, padding="same", use_bias=False, kernel_initializer=_init(), name="disc_last_conv"
    )(x)
    x = tf.keras.layers.LeakyReLU(0.2, name="disc_last_act")(norm_layer(cfg.norm, "disc_last_norm")(x))
    x = tf.keras.layers.Conv2D(1, 4, padding="same", kernel_initializer=_init(), name="logits_conv")(x)
    logits = tf.keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return tf.keras.Model([source, image], logits, name="discriminator")


def receptive_field(model: tf.keras.Model) -> int:
    """Receptive field in pixels of one output of a plain conv stack: ``rf += (k - 1) * jump; jump *= s``."""
    field, jump = 1, 1
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            field += (layer.kernel_size[0] - 1) * jump
            jump *= layer.strides[0]
    return field


# --- losses ---------------------------------------------------------------------------------------


def weighted_l1(target: tf.Tensor, output: tf.Tensor, mask: tf.Tensor, sky_weight: float) -> tf.Tensor:
    """``sum(w |target - output|) / sum(w)`` with ``w = 1 + (sky_weight - 1) * mask`` per pixel.

    Equal to the plain mean absolute error when ``sky_weight`` is 1 or the mask is empty.
    """
    weight = 1.0 + (sky_weight - 1.0) * tf.cast(mask, tf.float32)
    weight = tf.broadcast_to(weight, tf.shape(target))
    error = tf.abs(tf.cast(target, tf.float32) - tf.cast(output, tf.float32))
    return tf.reduce_sum(weight * error) / tf.reduce_sum(weight)


def adversarial_loss(logits: tf.Tensor, real: bool) -> tf.Tensor:
    """Mean sigmoid cross-entropy of ``logits`` against all-real (1) or all-fake (0) labels."""
    labels = tf.ones_like(logits) if real else tf.zeros_like(logits)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))


def loss_scale_wrapped(optimizer: tf.keras.optimizers.Optimizer) -> tf.keras.optimizers.Optimizer:
    """``optimizer`` in a `LossScaleOptimizer` under a float16 policy (its ``minimize`` then scales the loss)."""
    if tf.keras.mixed_precision.global_policy().compute_dtype == "float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def replica_share(loss: tf.Tensor) -> tf.Tensor:
    """The per-replica part of a mean loss: gradients are summed over replicas when applied."""
    return loss / tf.distribute.get_strategy().num_replicas_in_sync


# --- the trainable pair ----------------------------------------------------------------------------


class PairTrainer(tf.keras.Model):
    """Base of the translators' trainable models: ``fit`` on ``((source, mask), target)`` batches.

    Subclasses compute a dict of scalar losses in ``_step_losses``; each one
    is tracked by a `Mean` of the same name, which is what ``fit`` logs.

    Args:
        loss_names: sequence of str. The keys ``_step_losses`` returns.
    """

    def __init__(self, loss_names, **kwargs):
        super().__init__(**kwargs)
        self.trackers = {name: tf.keras.metrics.Mean(name=name) for name in loss_names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def test_step(self, data):
        (source, mask), target = data
        return self._track(self._step_losses(source, target, mask, training=False))

    def _step_losses(self, source, target, mask, training: bool) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def _track(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


class Pix2Pix(PairTrainer):
    """Generator + discriminator trained together by ``fit``.

    Args:
        generator: tf.keras.Model. From `build_unet_generator`.
        discriminator: tf.keras.Model. From `build_patchgan`.
        l1_weight: float. Lambda of the L1 term. Defaults to 100.
        gan_weight: float. Weight of the adversarial term. Defaults to 1.
        sky_weight: float. L1 weight of sky pixels. Defaults to 1.
        perceptual: Optional callable ``(a, b) -> scalar`` (e.g. `VGGPerceptualLoss`). Defaults to None.
        perceptual_weight: float. Its weight. Defaults to 0.
    """

    def __init__(
        self,
        generator,
        discriminator,
        *,
        l1_weight=100.0,
        gan_weight=1.0,
        sky_weight=1.0,
        perceptual=None,
        perceptual_weight=0.0,
        **kwargs,
    ):
        names = ["g_loss", "d_loss", "gan", "l1"] + (["perceptual"] if perceptual is not None else [])
        super().__init__(names, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.l1_weight, self.gan_weight, self.sky_weight = l1_weight, gan_weight, sky_weight
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        """Set both optimizers, wrapped for loss scaling under mixed_float16.

        The generator's is also ``model.optimizer`` (Keras wraps it), so the
        run history reports its learning rate.
        """
        super().compile(optimizer=g_optimizer, **kwargs)
        self.g_optimizer = self.optimizer
        self.d_optimizer = loss_scale_wrapped(d_optimizer)

    def call(self, source, training=False):
        return self.generator(source, training=training)

    def train_step(self, data):
        (source, mask), target = data
        with tf.GradientTape(persistent=True) as tape:
            losses = self._step_losses(source, target, mask, training=True)
            g_share, d_share = replica_share(losses["g_loss"]), replica_share(losses["d_loss"])
        self.g_optimizer.minimize(g_share, self.generator.trainable_variables, tape=tape)
        self.d_optimizer.minimize(d_share, self.discriminator.trainable_variables, tape=tape)
        del tape
        return self._track(losses)

    def _step_losses(self, source, target, mask, training: bool) -> dict[str, tf.Tensor]:
        fake = self.generator(source, training=training)
        real_logits = self.discriminator([source, target], training=training)
        fake_logits = self.discriminator([source, fake], training=training)
        losses = {
            "gan": adversarial_loss(fake_logits, real=True),
            "l1": weighted_l1(target, fake, mask, 1.0),
            "d_loss": 0.5 * (adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False)),
        }
        sky_l1 = losses["l1"] if self.sky_weight == 1 else weighted_l1(target, fake, mask, self.sky_weight)
        g_loss = self.gan_weight * losses["gan"] + self.l1_weight * sky_l1
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(target, fake)
            g_loss += self.perceptual_weight * losses["perceptual"]
        losses["g_loss"] = g_loss
        return losses


def build_pix2pix(cfg: Pix2PixConfig, learning_rate: float = 2e-4, channels: int = 3) -> Pix2Pix:
    """A compiled `Pix2Pix` (both Adams at ``learning_rate``, ``beta_1`` from ``cfg``).

    Build it inside the precision policy and strategy scope of the run.
    """
    perceptual = None
    if cfg.perceptual_weight > 0:
        from tfsky.models.vgg_perceptual import VGGPerceptualLoss

        assert cfg.vgg_weights is not None  # Pix2PixConfig.validate
        perceptual = VGGPerceptualLoss(cfg.vgg_weights)
    model = Pix2Pix(
        build_unet_generator(cfg, channels),
        build_patchgan(cfg, channels),
        l1_weight=cfg.l1_weight,
        gan_weight=cfg.gan_weight,
        sky_weight=cfg.sky_weight,
        perceptual=perceptual,
        perceptual_weight=cfg.perceptual_weight,
    )
    model.compile(
        g_optimizer=tf.keras.optimizers.Adam(learning_rate, beta_1=cfg.beta_1),
        d_optimizer=tf.keras.optimizers.Adam(learning_rate, beta_1=cfg.beta_1),
    )
    return model
