"""A pretrained encoder learns slower than its fresh decoder, or not at all at first.

The fine-tuning recipe for an ImageNet encoder under a randomly initialised
decoder: train the decoder alone for a few epochs (the decoder's first, large
gradients would otherwise rewrite the encoder's features), then everything,
the encoder at a fraction of the learning rate. Scaling the encoder's
gradients cannot do this — Adam's step does not depend on the gradient's
scale — so the optimizer's *update* of each encoder variable is scaled
instead: ``new = old + scale * (optimizer's new - old)``, with ``scale`` 0
(paused) for ``train.decoder_first_epochs`` and ``train.encoder_lr_factor``
after. The optimizer's moments keep following the encoder's gradients while
it is paused, as they would at full rate. With ``adamw`` the decoupled weight
decay still applies to the encoder at the full rate (it is applied outside the
update step; at 1e-4 it is a 1e-7 shrink per step).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import tensorflow as tf


@functools.cache
def encoder_scaled(base: Any) -> type:
    """A subclass of the tf-keras optimizer class ``base`` whose update of the variables given to its
    ``scale_encoder(variables)`` is scaled by its ``encoder_scale`` variable (1.0 until `EncoderRate` sets it);
    one class per base."""

    def scale_encoder(self, encoder_variables: Iterable[tf.Variable]) -> None:
        """Mark the encoder's variables; call inside the strategy scope, before the first step."""
        self.encoder_keys = frozenset(self._var_key(variable) for variable in encoder_variables)
        self.encoder_scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="encoder_scale")

    def update_step(self, gradient, variable):
        if self._var_key(variable) not in self.encoder_keys:
            return base.update_step(self, gradient, variable)
        before = tf.identity(variable)
        base.update_step(self, gradient, variable)
        scale = tf.cast(self.encoder_scale, variable.dtype)
        variable.assign(before + scale * (variable - before))

    methods = {"scale_encoder": scale_encoder, "update_step": update_step}
    return type(f"EncoderScaled{base.__name__}", (base,), methods)


class EncoderRate(tf.keras.callbacks.Callback):
    """Sets the optimizer's ``encoder_scale`` at every epoch start: 0 for the first ``decoder_first_epochs``,
    then ``factor`` (so a resumed run gets the value of the epoch it resumes at)."""

    def __init__(self, factor: float, decoder_first_epochs: int):
        super().__init__()
        self.factor = factor
        self.decoder_first_epochs = decoder_first_epochs

    def scale(self, epoch: int) -> float:
        return 0.0 if epoch < self.decoder_first_epochs else self.factor

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer (float16)
        inner.encoder_scale.assign(self.scale(epoch))
