"""A convolutional VAE translator: encode the SOURCE weather, decode the TARGET weather.

encoder(source) -> (mu, logvar), spatial latent maps of ``latent_channels``
at 1/2**depth resolution (so any input whose sides are multiples of
2**depth works, e.g. tiles); ``z = mu + temperature * exp(logvar / 2) * eps``
(`LatentSample`); decoder(z) -> target in [-1, 1].

Loss: ``L1_sky(target, decoded) + beta(epoch) * KL``, where ``KL`` is the
mean over latent elements of ``-(1 + logvar - mu**2 - exp(logvar)) / 2``
and beta warms up linearly (`kl_beta`): 0 at epoch 0, ``kl_weight`` from
epoch ``kl_warmup_epochs`` on (`KLWarmup` sets it at each epoch start, so a
resumed run gets the right value). The reported ``l1`` metric is the plain
L1 in [-1, 1] units of the decoded sample in training and of the decoded
mean (``z = mu``) in validation.

The saved inference model is `VAETranslator.translator`: source -> decoder(mu),
deterministic; `set_sampling(model, True)` makes it draw ``z`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf

from tfsky.errors import ConfigError
from tfsky.models.pix2pix import (
    Norm,
    PairTrainer,
    down_block,
    norm_layer,
    replica_share,
    tanh_head,
    up_block,
    weighted_l1,
)


@dataclasses.dataclass
class VAEConfig:
    """The ``model:`` section for ``kind: vae``.

    Args:
        depth: int. Stride-2 levels of encoder and decoder. Defaults to 4.
        base_filters: int. Filters of the first encoder level, doubled per level. Defaults to 32.
        max_filters: int. Filter cap. Defaults to 256.
        latent_channels: int. Channels of the latent map. Defaults to 64.
        encoder: str. ``plain`` (conv blocks) or ``resnet`` (each level followed by residual blocks).
            Defaults to ``plain``.
        res_blocks: int. Residual blocks per level for ``resnet``. Defaults to 1.
        norm: str. ``batch`` or ``instance``. Defaults to ``batch``.
        kl_weight: float. Final KL weight beta. Defaults to 0.01.
        kl_warmup_epochs: int. Epochs of linear KL warm-up (0 = none). Defaults to 5.
        sky_weight: float. L1 weight of sky pixels. Defaults to 1.
        beta_1: float. Adam beta_1. Defaults to 0.9.
    """

    depth: int = 4
    base_filters: int = 32
    max_filters: int = 256
    latent_channels: int = 64
    encoder: Literal["plain", "resnet"] = "plain"
    res_blocks: int = 1
    norm: Norm = "batch"
    kl_weight: float = 0.01
    kl_warmup_epochs: int = 5
    sky_weight: float = 1.0
    beta_1: float = 0.9

    def validate(self) -> None:
        for key in ("depth", "base_filters", "max_filters", "latent_channels"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1; got {getattr(self, key)}")
        for key in ("res_blocks", "kl_warmup_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0; got {getattr(self, key)}")
        if self.kl_weight < 0:
            raise ConfigError("kl_weight", f"must be >= 0; got {self.kl_weight}")
        if self.sky_weight <= 0:
            raise ConfigError("sky_weight", f"must be > 0; got {self.sky_weight}")


def kl_beta(epoch: int, kl_weight: float, warmup_epochs: int) -> float:
    """Linear KL warm-up: ``kl_weight * min(1, epoch / warmup_epochs)`` (0-based epochs)."""
    if warmup_epochs <= 0:
        return kl_weight
    return kl_weight * min(1.0, epoch / warmup_epochs)


@tf.keras.utils.register_keras_serializable(package="tfsky")
class LatentSample(tf.keras.layers.Layer):
    """``[mu, logvar] -> mu + temperature * exp(logvar / 2) * eps``; temperature 0 returns mu.

    Args:
        temperature: float. Scale of the noise. Defaults to 0 (deterministic).
    """

    def __init__(self, temperature: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def call(self, inputs):
        mu, logvar = inputs
        if not self.temperature:
            return mu
        noise = tf.random.normal(tf.shape(mu), dtype=mu.dtype)
        return mu + self.temperature * tf.exp(0.5 * logvar) * noise

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def set_sampling(model: tf.keras.Model, enabled: bool) -> None:
    """Make a VAE translator draw z (``True``) or use mu (``False``); call before tracing it."""
    for layer in model.layers:
        if isinstance(layer, LatentSample):
            layer.temperature = 1.0 if enabled else 0.0


def residual_block(x, filters: int, norm: Norm, name: str):
    """Two 3x3 convs with norm and a ReLU between, added to the input."""
    y = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = tf.keras.layers.ReLU(name=f"{name}_act")(norm_layer(norm, f"{name}_norm1")(y))
    y = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = norm_layer(norm, f"{name}_norm2")(y)
    return tf.keras.layers.Add(name=f"{name}_add")([x, y])


def build_encoder(cfg: VAEConfig, channels: int = 3) -> tf.keras.Model:
    """source [B, H, W, C] -> (mu, logvar), each [B, H / 2**depth, W / 2**depth, latent] in float32."""
    inputs = tf.keras.Input((None, None, channels), name="source")
    x = inputs
    for level in range(cfg.depth):
        width = min(cfg.base_filters * 2**level, cfg.max_filters)
        x = down_block(x, width, None if level == 0 else cfg.norm, f"enc{level}")
        if cfg.encoder == "resnet":
            for block in range(cfg.res_blocks):
                x = residual_block(x, width, cfg.norm, f"enc{level}_res{block}")
    mu = tf.keras.layers.Conv2D(cfg.latent_channels, 3, padding="same", dtype="float32", name="mu")(x)
    logvar = tf.keras.layers.Conv2D(cfg.latent_channels, 3, padding="same", dtype="float32", name="logvar")(x)
    return tf.keras.Model(inputs, [mu, logvar], name="encoder")


def build_decoder(cfg: VAEConfig, channels: int = 3) -> tf.keras.Model:
    """z [B, h, w, latent] -> image [B, h * 2**depth, w * 2**depth, C] in [-1, 1] (float32 tanh)."""
    inputs = tf.keras.Input((None, None, cfg.latent_channels), name="z")
    x = inputs
    for level in reversed(range(1, cfg.depth)):
        x = up_block(x, min(cfg.base_filters * 2 ** (level - 1), cfg.max_filters), cfg.norm, 0.0, f"dec{level}")
    outputs = tanh_head(x, channels, "translated")
    return tf.keras.Model(inputs, outputs, name="decoder")


def build_translator(encoder: tf.keras.Model, decoder: tf.keras.Model, channels: int = 3) -> tf.keras.Model:
    """The inference model: source -> decoder(`LatentSample`(encoder(source))), mu by default."""
    inputs = tf.keras.Input((None, None, channels), name="source")
    z = LatentSample(name="latent_sample")(encoder(inputs))
    return tf.keras.Model(inputs, decoder(z), name="vae_translator")


class VAETranslator(PairTrainer):
    """Encoder + decoder trained by ``fit`` on ``((source, mask), target)`` batches.

    Args:
        encoder: tf.keras.Model. From `build_encoder`.
        decoder: tf.keras.Model. From `build_decoder`.
        sky_weight: float. L1 weight of sky pixels. Defaults to 1.
    """

    def __init__(self, encoder, decoder, *, sky_weight: float = 1.0, **kwargs):
        super().__init__(("loss", "reconstruction", "kl", "l1"), **kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.translator = build_translator(encoder, decoder, encoder.input_shape[-1])
        self.sky_weight = sky_weight
        self.kl_beta = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="kl_beta")

    def call(self, source, training=False):
        return self.translator(source, training=training)

    def train_step(self, data):
        (source, mask), target = data
        with tf.GradientTape() as tape:
            losses = self._step_losses(source, target, mask, training=True)
            share = replica_share(losses["loss"])
        variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        self.optimizer.minimize(share, variables, tape=tape)
        return self._track(losses)

    def _step_losses(self, source, target, mask, training: bool) -> dict[str, tf.Tensor]:
        mu, logvar = self.encoder(source, training=training)
        z = mu + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mu)) if training else mu
        decoded = self.decoder(z, training=training)
        reconstruction = weighted_l1(target, decoded, mask, self.sky_weight)
        kl = tf.reduce_mean(-0.5 * (1.0 + logvar - tf.square(mu) - tf.exp(logvar)))
        return {
            "loss": reconstruction + self.kl_beta * kl,
            "reconstruction": reconstruction,
            "kl": kl,
            "l1": weighted_l1(target, decoded, mask, 1.0),
        }

    def _track(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**super()._track(losses), "kl_beta": self.kl_beta.value()}


class KLWarmup(tf.keras.callbacks.Callback):
    """Sets ``model.kl_beta`` from `kl_beta` at the start of every epoch."""

    def __init__(self, kl_weight: float, warmup_epochs: int):
        super().__init__()
        self.kl_weight, self.warmup_epochs = kl_weight, warmup_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.kl_beta.assign(kl_beta(epoch, self.kl_weight, self.warmup_epochs))


def build_vae(cfg: VAEConfig, learning_rate: float = 2e-4, channels: int = 3) -> VAETranslator:
    """A compiled `VAETranslator` (Adam at ``learning_rate``); build it inside the run's policy/strategy scope."""
    model = VAETranslator(build_encoder(cfg, channels), build_decoder(cfg, channels), sky_weight=cfg.sky_weight)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate, beta_1=cfg.beta_1))
    return model
