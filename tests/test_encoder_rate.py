"""The encoder's pace: decoder-first epochs pause it exactly, ``encoder_lr_factor`` scales its updates exactly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.config import load_config
from tfsky.errors import ConfigError
from tfsky.models.segmenter import SegmenterModelConfig, build_segmenter, encoder_layers
from tfsky.train.config import SegmenterTrainConfig
from tfsky.train.segmenter import make_optimizer, pace_callbacks

TINY = SegmenterModelConfig(backbone="resnet18", decoder_filters=(16, 8, 8, 4, 4), precision="float32")
IMAGES = tf.random.stateless_uniform([4, 64, 64, 3], seed=[3, 4])
MASKS = tf.cast(IMAGES[..., :1] > 0.5, tf.float32)


def compiled(train: SegmenterTrainConfig, weights=None) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    model = build_segmenter(TINY, 3)
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=make_optimizer(train, 1, model, TINY.backbone), loss="binary_crossentropy")
    return model


def split_weights(model: tf.keras.Model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Trainable weights of the encoder and of everything else (decoder, head)."""
    encoder = {id(v) for layer in encoder_layers(model, TINY.backbone) for v in layer.trainable_weights}
    values = [(id(v) in encoder, v.numpy().copy()) for v in model.trainable_weights]
    return [v for is_encoder, v in values if is_encoder], [v for is_encoder, v in values if not is_encoder]


def fit_once(model: tf.keras.Model, train: SegmenterTrainConfig, epochs: int = 1) -> None:
    model.fit(IMAGES, MASKS, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=pace_callbacks(train))


def test_encoder_updates_are_the_plain_optimizers_scaled_by_the_factor():
    plain_train, paced_train = (
        SegmenterTrainConfig(learning_rate=1e-2),
        SegmenterTrainConfig(learning_rate=1e-2, encoder_lr_factor=0.1),
    )
    plain = compiled(plain_train)
    start = plain.get_weights()
    paced = compiled(paced_train, start)
    start_encoder, start_decoder = split_weights(plain)
    assert start_encoder and start_decoder
    fit_once(plain, plain_train)
    fit_once(paced, paced_train)
    plain_encoder, plain_decoder = split_weights(plain)
    paced_encoder, paced_decoder = split_weights(paced)
    for a, b in zip(paced_decoder, plain_decoder):  # the decoder steps exactly as with the plain optimizer
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = 0
    for s, a, b in zip(start_encoder, paced_encoder, plain_encoder):
        np.testing.assert_allclose(a - s, 0.1 * (b - s), rtol=1e-3, atol=1e-7)
        moved += np.abs(b - s).max() > 1e-4
    assert moved > len(start_encoder) // 2  # the plain step really moved the encoder


def test_decoder_first_epochs_pause_the_encoder_then_it_learns():
    train = SegmenterTrainConfig(learning_rate=1e-2, decoder_first_epochs=1, encoder_lr_factor=0.5)
    model = compiled(train)
    start_encoder, start_decoder = split_weights(model)
    fit_once(model, train)
    paused_encoder, trained_decoder = split_weights(model)
    for a, b in zip(start_encoder, paused_encoder):
        np.testing.assert_array_equal(a, b)  # bit-identical while the decoder learns alone
    assert all(not np.array_equal(a, b) for a, b in zip(start_decoder, trained_decoder))
    model.fit(IMAGES, MASKS, batch_size=4, epochs=2, initial_epoch=1, verbose=0, callbacks=pace_callbacks(train))
    later_encoder, _ = split_weights(model)
    assert sum(not np.array_equal(a, b) for a, b in zip(paused_encoder, later_encoder)) > len(paused_encoder) // 2
    assert model.optimizer.encoder_scale.numpy() == 0.5


def test_plain_configs_keep_the_plain_optimizer_class():
    model = build_segmenter(TINY, 3)
    assert (
        type(make_optimizer(SegmenterTrainConfig(optimizer="adamw"), 10, model, "resnet18"))
        is tf.keras.optimizers.AdamW
    )
    assert pace_callbacks(SegmenterTrainConfig()) == []
    paced = make_optimizer(SegmenterTrainConfig(optimizer="sgd", decoder_first_epochs=2), 10, model, "resnet18")
    assert isinstance(paced, tf.keras.optimizers.SGD) and type(paced).__name__ == "EncoderScaledSGD"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.encoder_lr_factor=0", "config key 'train.encoder_lr_factor': must be in (0, 1]; got 0.0"),
        ("train.encoder_lr_factor=1.5", "config key 'train.encoder_lr_factor': must be in (0, 1]; got 1.5"),
        ("train.decoder_first_epochs=50", "config key 'train.decoder_first_epochs': must be less than epochs (50)"),
        ("train.decoder_first_epochs=-1", "config key 'train.decoder_first_epochs': must be >= 0; got -1"),
    ],
)
def test_bad_pace_settings_name_the_key(setting, message):
    with pytest.raises(ConfigError) as error:
        load_config(SegmenterTrainConfig, None, [setting], section="train")
    assert str(error.value) == message
