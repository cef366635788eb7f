"""pix2pix and VAE translators: shapes, layers, receptive field, one training step, losses, KL warm-up, VGG."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.transforms import Preprocess
from tfsky.errors import ConfigError
from tfsky.models.bundle import ModelInfo, load_model, save_model
from tfsky.models.pix2pix import (
    Pix2PixConfig,
    build_patchgan,
    build_pix2pix,
    build_unet_generator,
    norm_layer,
    receptive_field,
    weighted_l1,
)
from tfsky.models.precision import precision_policy
from tfsky.models.vae import KLWarmup, LatentSample, VAEConfig, build_vae, kl_beta, set_sampling

TINY = Pix2PixConfig(depth=6, base_filters=4, max_filters=16, disc_filters=4)
TINY_VAE = VAEConfig(depth=3, base_filters=4, max_filters=16, latent_channels=4, kl_warmup_epochs=2, kl_weight=0.1)


def batch(size: int = 2, side: int = 64, seed: int = 0):
    """``((source, mask), target)`` like the pair pipeline: images in [-1, 1], mask 0/1."""
    rng = np.random.default_rng(seed)
    source = rng.uniform(-1, 1, (size, side, side, 3)).astype(np.float32)
    target = rng.uniform(-1, 1, (size, side, side, 3)).astype(np.float32)
    mask = (rng.uniform(size=(size, side, side, 1)) > 0.5).astype(np.float32)
    return (tf.constant(source), tf.constant(mask)), tf.constant(target)


def weights_of(model: tf.keras.Model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.trainable_weights]


def changed(before: list[np.ndarray], model: tf.keras.Model) -> bool:
    return all(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights) if a.ndim == 4)


def test_generator_maps_images_to_same_size_in_tanh_range():
    generator = build_unet_generator(TINY)
    out = generator(tf.random.uniform((2, 64, 64, 3), -1, 1))
    assert out.shape == (2, 64, 64, 3) and out.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(out))) <= 1.0
    assert build_unet_generator(TINY)(tf.zeros((1, 128, 192, 3))).shape == (1, 128, 192, 3)  # any multiple of 64


def test_instance_norm_is_core_group_normalization_with_one_group_per_channel():
    assert norm_layer("instance", "n").groups == -1
    cfg = Pix2PixConfig(**{**TINY.__dict__, "norm": "instance"})
    for model in (build_unet_generator(cfg), build_patchgan(cfg)):
        norms = [layer for layer in model.layers if "norm" in layer.name]
        assert norms and all(type(layer) is tf.keras.layers.GroupNormalization for layer in norms)
        assert all(layer.groups == layer.input_shape[-1] for layer in norms)  # groups=-1 resolves to channels
    batch_norms = [layer for layer in build_unet_generator(TINY).layers if "norm" in layer.name]
    assert all(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in batch_norms)


def test_patchgan_receptive_field_is_70():
    disc = build_patchgan(TINY)
    assert receptive_field(disc) == 70
    assert receptive_field(build_patchgan(Pix2PixConfig(disc_layers=2, disc_filters=4))) == 34
    logits = disc([tf.zeros((1, 64, 64, 3)), tf.zeros((1, 64, 64, 3))])
    assert logits.shape == (1, 8, 8, 1)  # one real/fake logit per patch, stride 8


def test_one_train_step_updates_generator_and_discriminator_with_finite_losses():
    model = build_pix2pix(TINY)
    data = batch()
    model(data[0][0])
    gen_before, disc_before = weights_of(model.generator), weights_of(model.discriminator)
    logs = model.train_step(data)
    assert set(logs) == {"g_loss", "d_loss", "gan", "l1"}
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert changed(gen_before, model.generator) and changed(disc_before, model.discriminator)
    assert model.g_optimizer.iterations.numpy() == 1 and model.d_optimizer.iterations.numpy() == 1
    assert float(logs["g_loss"]) > 100 * float(logs["l1"])  # lambda 100 plus the GAN term


def test_mixed_precision_wraps_both_optimizers_and_keeps_float32_heads():
    with precision_policy("mixed_float16"):
        model = build_pix2pix(TINY)
        logs = model.train_step(batch())
    assert isinstance(model.g_optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert isinstance(model.d_optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert model.generator.output.dtype == tf.float32 and model.discriminator.output.dtype == tf.float32
    assert all(np.isfinite(float(v)) for v in logs.values())


def test_weighted_l1_exact_values():
    target = tf.constant([[[[1.0], [1.0]]]])  # 1 x 1 x 2 x 1
    output = tf.constant([[[[0.0], [0.5]]]])
    mask = tf.constant([[[[1.0], [0.0]]]])
    assert float(weighted_l1(target, output, mask, 1.0)) == pytest.approx(0.75)
    assert float(weighted_l1(target, output, mask, 3.0)) == pytest.approx((3 * 1.0 + 0.5) / 4)
    assert float(weighted_l1(target, output, tf.zeros_like(mask), 3.0)) == pytest.approx(0.75)


def test_sky_weight_changes_the_generator_loss_only():
    data = batch(seed=1)
    plain = build_pix2pix(TINY)
    plain(data[0][0])
    weighted = build_pix2pix(Pix2PixConfig(**{**TINY.__dict__, "sky_weight": 4.0}))
    weighted(data[0][0])
    weighted.set_weights(plain.get_weights())
    a, b = plain.test_step(data), weighted.test_step(data)
    assert float(a["l1"]) == pytest.approx(float(b["l1"]))
    assert float(a["g_loss"]) != pytest.approx(float(b["g_loss"]))


def test_vae_shapes_training_and_deterministic_inference():
    vae = build_vae(TINY_VAE)
    mu, logvar = vae.encoder(tf.zeros((2, 64, 64, 3)))
    assert mu.shape == logvar.shape == (2, 8, 8, 4)
    data = batch()
    before = weights_of(vae.encoder)
    logs = vae.train_step(data)
    assert {"loss", "reconstruction", "kl", "l1", "kl_beta"} <= set(logs)
    assert all(np.isfinite(float(v)) for v in logs.values()) and changed(before, vae.encoder)
    source = data[0][0]
    np.testing.assert_array_equal(vae.translator(source).numpy(), vae.translator(source).numpy())
    np.testing.assert_allclose(vae.translator(source).numpy(), vae.decoder(vae.encoder(source)[0]).numpy(), atol=1e-6)


def test_vae_sampling_draws_different_outputs():
    vae = build_vae(TINY_VAE)
    vae.encoder.get_layer("logvar").bias.assign(tf.fill([4], 2.0))  # wide posterior: samples differ visibly
    set_sampling(vae.translator, True)
    source = tf.zeros((1, 64, 64, 3))
    assert not np.allclose(vae.translator(source).numpy(), vae.translator(source).numpy())
    set_sampling(vae.translator, False)
    np.testing.assert_array_equal(vae.translator(source).numpy(), vae.translator(source).numpy())


def test_kl_warmup_schedule_and_callback():
    assert [kl_beta(e, 0.1, 4) for e in range(6)] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1])
    assert kl_beta(0, 0.1, 0) == 0.1
    vae = build_vae(TINY_VAE)
    data = tf.data.Dataset.from_tensors(batch()).repeat(2)
    history = vae.fit(data, epochs=3, verbose=0, callbacks=[KLWarmup(0.1, 2)])
    assert history.history["kl_beta"] == pytest.approx([0.0, 0.05, 0.1])


def test_vae_translator_round_trips_through_the_model_bundle(tmp_path):
    vae = build_vae(TINY_VAE)
    source = tf.random.uniform((1, 64, 64, 3), -1, 1)
    info = ModelInfo(task="vae", preprocess=Preprocess(), tile_size=64, classes=3)
    save_model(vae.translator, tmp_path / "best.keras", info)
    loaded, loaded_info = load_model(tmp_path / "best.keras")
    assert loaded_info.task == "vae"
    assert any(isinstance(layer, LatentSample) for layer in loaded.layers)
    np.testing.assert_allclose(loaded(source).numpy(), vae.translator(source).numpy(), atol=1e-6)


def test_vgg_perceptual_loss_from_a_local_weights_file(tmp_path):
    from tfsky.models.vgg_perceptual import VGGPerceptualLoss

    weights = tmp_path / "vgg19_notop.h5"
    tf.keras.applications.VGG19(weights=None, include_top=False).save_weights(str(weights))
    loss = VGGPerceptualLoss(weights)
    a, b = tf.random.uniform((1, 32, 32, 3), -1, 1), tf.random.uniform((1, 32, 32, 3), -1, 1)
    assert float(loss(a, a)) == 0.0
    assert float(loss(a, b)) > 0.0
    with pytest.raises(
        ConfigError,
        match=r"config key 'model.vgg_weights': file not found: .*missing.h5 "
        r"\(VGG19 weights are never downloaded\)",
    ):
        VGGPerceptualLoss(tmp_path / "missing.h5")


def test_perceptual_weight_needs_a_weights_file():
    from tfsky.config import from_dict

    with pytest.raises(ConfigError, match="config key 'model.vgg_weights': is needed when perceptual_weight > 0"):
        from_dict(Pix2PixConfig, {"perceptual_weight": 1.0}, "model")
