"""The segmenter builder, precision handling, encoder weights files, losses and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.config import load_config
from tfsky.errors import ConfigError, InputError
from tfsky.io.images import read_image
from tfsky.models.losses import make_loss
from tfsky.models.metrics import F1, IoU
from tfsky.data.transforms import Preprocess
from tfsky.models.bundle import ModelInfo, load_model, save_model
from tfsky.models.precision import (
    BF16_OVERRIDE,
    check_tf_config,
    for_inference,
    global_batch_size,
    precision_policy,
    resolve_precision,
)
from tfsky.models.segmenter import (
    SegmenterModelConfig,
    build_segmenter,
    load_encoder_weights,
    save_encoder_weights,
    segmentation_models,
    use_bilinear_upsampling,
)

TINY = dict(backbone="resnet18", decoder_filters=(32, 16, 8, 8, 4))


def tiny(**overrides) -> SegmenterModelConfig:
    return SegmenterModelConfig(**{**TINY, **overrides})


def with_trained_input_statistics(model):
    """A ResNet segmenter whose input batch norm ``bn_data`` holds the statistics training gives it.

    The encoder input is 0-255 for ResNets; a fresh ``bn_data`` (mean 0, variance 1)
    passes it on unscaled, so an untrained net computes with values ~255x larger
    than any trained one and reduced-precision comparisons measure that, not the model.
    """
    bn = model.get_layer("bn_data")
    beta, _, _ = bn.get_weights()
    bn.set_weights([beta, np.full(3, 120.0, np.float32), np.full(3, 70.0**2, np.float32)])
    return model


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_head_is_float32_and_inner_layers_follow_the_policy(policy):
    with precision_policy(policy):
        model = build_segmenter(tiny(), 3)
    compute = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[policy]
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.get_layer("final_conv").compute_dtype == compute
    assert model.get_layer("conv0").compute_dtype == compute
    assert model.output.dtype == tf.float32
    assert model(tf.zeros([1, 64, 64, 3])).dtype == tf.float32


def test_mixed_float16_compile_wraps_optimizer_in_loss_scaling():
    with precision_policy("mixed_float16"):
        model = build_segmenter(tiny(), 3)
        model.compile(optimizer=tf.keras.optimizers.Adam(), loss=make_loss("bce_jaccard"))
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    with precision_policy("float32"):
        model = build_segmenter(tiny(), 3)
        model.compile(optimizer=tf.keras.optimizers.Adam(), loss=make_loss("bce_jaccard"))
    assert not isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)


def without_gpu(monkeypatch) -> None:
    """Make this machine look GPU-less to tfsky, whatever it has (the suite also runs on GPU boxes)."""
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [] if kind == "GPU" else real(kind))


def test_auto_precision_is_mixed_float16_with_a_gpu_and_float32_without(monkeypatch):
    monkeypatch.setenv(BF16_OVERRIDE, "0")  # a CPU without a bfloat16 unit (tests/test_precision_auto.py: with one)
    fake_gpu = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fake_gpu if kind == "GPU" else [])
    assert resolve_precision("auto") == "mixed_float16"
    without_gpu(monkeypatch)
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"  # an explicit choice is kept either way
    assert global_batch_size(8, tf.distribute.get_strategy()) == 8


@pytest.mark.parametrize("classes", [1, 3])
def test_output_shape_and_head(classes):
    model = build_segmenter(tiny(classes=classes), 3)
    out = model(tf.random.uniform([2, 64, 64, 3])).numpy()
    assert out.shape == (2, 64, 64, classes)
    if classes == 1:
        assert model.get_layer("probabilities").get_config()["activation"] == "sigmoid"
        assert 0 <= out.min() and out.max() <= 1
    else:
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_input_channels(channels):
    model = build_segmenter(tiny(), channels)
    assert model.input_shape == (None, None, None, channels)
    assert model(tf.zeros([1, 64, 64, channels])).shape == (1, 64, 64, 1)


@pytest.mark.parametrize("architecture", ["unet", "fpn", "linknet"])
def test_architectures(architecture):
    model = build_segmenter(tiny(architecture=architecture), 3)
    assert model.name == f"{architecture}_resnet18"
    assert model(tf.zeros([1, 64, 64, 3])).shape == (1, 64, 64, 1)


def test_layer_names_are_deterministic():
    first = [layer.name for layer in build_segmenter(tiny(), 3).layers]
    second = [layer.name for layer in build_segmenter(tiny(), 3).layers]
    assert first == second


def test_shipped_resnet34_unet_builds():
    model = build_segmenter(SegmenterModelConfig(), 3)
    assert model.name == "unet_resnet34"
    assert 24e6 < model.count_params() < 25e6


def test_encoder_weights_file_round_trip(tmp_path):
    source = build_segmenter(tiny(), 4)
    path = tmp_path / "encoder.h5"
    save_encoder_weights(source, path, "resnet18")
    fresh = build_segmenter(tiny(encoder_weights=path), 4)
    for name in ("bn_data", "conv0", "stage4_unit2_conv2"):
        for a, b in zip(source.get_layer(name).weights, fresh.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(  # the decoder is not part of the file
        source.get_layer("final_conv").kernel.numpy(), fresh.get_layer("final_conv").kernel.numpy()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.h5"]


def test_encoder_weights_channel_mismatch_is_one_clear_line(tmp_path):
    path = tmp_path / "rgb.h5"
    save_encoder_weights(build_segmenter(tiny(), 3), path, "resnet18")
    model = build_segmenter(tiny(), 4)
    with pytest.raises(InputError, match="encoder weights are for 3 input channels, the model has 4"):
        load_encoder_weights(model, path, "resnet18")


def test_encoder_weights_of_another_backbone(tmp_path):
    path = tmp_path / "r18.h5"
    save_encoder_weights(build_segmenter(tiny(), 3), path, "resnet18")
    model = build_segmenter(tiny(backbone="seresnet18"), 3)
    with pytest.raises(InputError, match=r"not seresnet18 encoder weights: the file (lacks|has extra) layers \("):
        load_encoder_weights(model, path, "seresnet18")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="config key 'model.backbone': unknown backbone 'resnet35'"):
        load_config(SegmenterModelConfig, None, ["model.backbone=resnet35"], section="model")
    with pytest.raises(ConfigError, match="config key 'model.encoder_weights': weights file not found"):
        load_config(SegmenterModelConfig, None, [f"model.encoder_weights={tmp_path}/none.h5"], section="model")
    with pytest.raises(ConfigError, match="config key 'model.architecture': must be one of unet, fpn, linknet"):
        load_config(SegmenterModelConfig, None, ["model.architecture=pspnet"], section="model")
    with pytest.raises(ConfigError, match="config key 'model.encoder_batchnorm': must be one of train, frozen"):
        load_config(SegmenterModelConfig, None, ["model.encoder_batchnorm=fixed"], section="model")


def test_multi_worker_needs_tf_config():
    with pytest.raises(ConfigError, match="train.strategy.*TF_CONFIG.*not set"):
        check_tf_config(None)
    with pytest.raises(ConfigError, match="train.strategy.*'cluster' and 'task'"):
        check_tf_config('{"cluster": {}}')
    check_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}')


def masks(*rows) -> tf.Tensor:
    """A [1, 1, W, 1] mask from a row of 0/1 values."""
    return tf.constant(rows, tf.float32)[None, :, :, None]


@pytest.mark.parametrize(
    "truth, pred, iou, f1",
    [
        ([[1, 1, 0, 0]], [[0.9, 0.2, 0.0, 0.0]], 0.5, 2 / 3),  # tp 1, fn 1
        ([[1, 1, 0, 0]], [[0.0, 0.7, 0.6, 0.0]], 1 / 3, 0.5),  # tp 1, fp 1, fn 1
        ([[1, 1, 0, 1]], [[0.9, 0.9, 0.1, 0.1]], 2 / 3, 0.8),  # tp 2, fn 1
        ([[0, 0, 0, 0]], [[0.1, 0.4, 0.2, 0.0]], 1.0, 1.0),  # empty vs empty
        ([[0, 0, 0, 0]], [[0.1, 0.5, 0.2, 0.0]], 0.0, 0.0),  # 0.5 is sky (>= 0.5, as masks and evaluate cut)
        ([[0, 0, 0, 0]], [[0.0, 0.0, 0.9, 0.0]], 0.0, 0.0),  # sky predicted where there is none
    ],
)
def test_metrics_on_hand_computed_masks(truth, pred, iou, f1):
    for metric, expected in ((IoU(), iou), (F1(), f1)):
        metric.update_state(masks(*truth), masks(*pred))
        assert metric.result().numpy() == pytest.approx(expected, abs=1e-7)


def test_metrics_accumulate_over_batches_not_average_them():
    metric = IoU()
    metric.update_state(masks([1, 1, 1, 1]), masks([1, 1, 1, 0]))  # batch IoU 3/4
    metric.update_state(masks([1, 0, 0, 0]), masks([0, 0, 0, 0]))  # batch IoU 0
    assert metric.result().numpy() == pytest.approx(3 / 5)  # not (3/4 + 0) / 2
    metric.reset_state()
    assert metric.result().numpy() == 1.0


def test_softmax_metric_uses_argmax_and_averages_classes():
    truth = tf.one_hot([[[0, 1, 2, 2]]], 3)
    pred = tf.one_hot([[[0, 1, 2, 1]]], 3) * 0.6 + 0.1
    metric = IoU(classes=3)
    metric.update_state(truth, pred)
    assert metric.result().numpy() == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)


@pytest.mark.parametrize("name", ["bce_jaccard", "bce_lovasz", "dice", "focal", "bce"])
@pytest.mark.parametrize("classes", [1, 3])
def test_losses_are_float32_and_smaller_for_better_predictions(name, classes):
    truth = tf.one_hot([[[0, 1, 2, 0]]], 3)[..., :classes] if classes > 1 else masks([1, 0, 1, 1])
    good = tf.cast(truth * 0.8 + 0.1, tf.float16)
    bad = tf.cast(1 - good, tf.float16)
    loss = make_loss(name, classes)
    good_loss, bad_loss = loss(truth, good), loss(truth, bad)
    assert good_loss.dtype == tf.float32
    assert 0 <= good_loss.numpy() < bad_loss.numpy()


def test_jit_compile_needs_and_gets_bilinear_upsampling():
    def tiny_decoder():
        inputs = tf.keras.Input((8, 8, 2))
        x = tf.keras.layers.UpSampling2D(2)(tf.keras.layers.Conv2D(2, 1)(inputs))
        model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(1, 1)(x))
        model.compile("sgd", "mse", jit_compile=True)
        return model

    data = (tf.ones([1, 8, 8, 2]), tf.zeros([1, 16, 16, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ResizeNearestNeighborGrad"):
        tiny_decoder().train_on_batch(*data)
    model = tiny_decoder()
    use_bilinear_upsampling(model)
    assert np.isfinite(model.train_on_batch(*data))
    segmenter = build_segmenter(tiny(jit_compile=True), 3)
    upsampling = [layer for layer in segmenter.layers if isinstance(layer, tf.keras.layers.UpSampling2D)]
    assert len(upsampling) == 5 and {layer.interpolation for layer in upsampling} == {"bilinear"}


def test_segmentation_models_metric_differs_only_by_its_smoothing():
    """What the metrics module docstring says about sm.metrics.IOUScore."""
    from tfsky.models.segmenter import segmentation_models

    sm_iou = segmentation_models().metrics.IOUScore(threshold=0.5)
    truth, pred = masks([1, 1, 0, 0]), masks([0.9, 0.2, 0.0, 0.0])
    assert float(sm_iou(truth, pred)) == pytest.approx((1 + 1e-5) / (2 + 1e-5), rel=1e-6)
    empty = masks([0, 0, 0, 0])
    assert float(sm_iou(empty, empty)) == 1.0


def test_mixed_precision_model_loads_in_float32_without_a_gpu(tmp_path, monkeypatch):
    without_gpu(monkeypatch)
    tf.keras.utils.set_random_seed(0)  # fixed weights: a random deep net amplifies rounding unevenly from draw to draw
    with precision_policy("mixed_float16"):
        trained = with_trained_input_statistics(build_segmenter(tiny(), 3))
    with precision_policy("float32"):
        reference = build_segmenter(tiny(), 3)
    reference.set_weights(trained.get_weights())
    save_model(trained, tmp_path / "m.keras", ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64))
    tiles = tf.random.stateless_uniform([2, 64, 64, 3], seed=[3, 4])

    loaded, _ = load_model(tmp_path / "m.keras")  # auto, on a machine without a GPU
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    np.testing.assert_array_equal(loaded(tiles).numpy(), reference(tiles).numpy())  # same weights, float32 maths
    as_trained, _ = load_model(tmp_path / "m.keras", precision="as_trained")
    assert as_trained.get_layer("conv0").compute_dtype == "float16"
    np.testing.assert_allclose(as_trained(tiles).numpy(), reference(tiles).numpy(), atol=2e-2)


def test_float32_rebuild_keeps_nested_translator_models_and_their_weights():
    from tfsky.models.vae import VAEConfig, build_vae, set_sampling

    with precision_policy("mixed_float16"):
        vae = build_vae(VAEConfig(depth=2, base_filters=4, max_filters=8, latent_channels=4))
    translator = vae.translator
    set_sampling(translator, False)
    rebuilt = for_inference(translator, "float32")
    models = [model for model in (rebuilt, *rebuilt.layers) if isinstance(model, tf.keras.Model)]
    inner = [layer for model in models for layer in model.layers]
    assert {layer.compute_dtype for layer in inner} == {"float32"} and len(rebuilt.weights) == len(translator.weights)
    source = tf.random.stateless_uniform([1, 16, 16, 3], seed=[5, 6], minval=-1, maxval=1)
    np.testing.assert_allclose(rebuilt(source).numpy(), translator(source).numpy(), atol=2e-2)
    assert for_inference(rebuilt, "float32") is rebuilt  # nothing mixed left: returned as is


def bare_backbone_features(backbone: str, weights, photo: np.ndarray, layer: str) -> np.ndarray:
    """``layer``'s output in the published backbone alone, fed as segmentation-models preprocesses a 0-255 photo."""
    sm = segmentation_models()
    get_backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)
    bare = get_backbone(backbone, input_shape=(None, None, 3), weights=None, include_top=False)
    bare.load_weights(str(weights))
    features = tf.keras.Model(bare.input, bare.get_layer(layer).output)
    return features(sm.get_preprocessing(backbone)(photo * 255.0)).numpy()


def segmenter_features(model, photo: np.ndarray, layer: str) -> np.ndarray:
    return tf.keras.Model(model.input, model.get_layer(layer).output)(photo).numpy()


@pytest.mark.parametrize(
    ("backbone", "layer"),
    [("mobilenetv2", "block_6_expand_relu"), ("resnet18", "stage3_unit1_relu1"), ("vgg16", "block3_conv3")],
)
def test_encoder_inside_the_segmenter_sees_what_the_bare_backbone_sees(tmp_path, backbone, layer):
    weights = tmp_path / "encoder.h5"
    save_encoder_weights(build_segmenter(tiny(backbone=backbone), 3), weights, backbone)  # random "published" weights
    model = build_segmenter(tiny(backbone=backbone, encoder_weights=weights), 3)
    photo = tf.random.stateless_uniform([1, 64, 64, 3], seed=[5, 6]).numpy()  # [0, 1] pixels, as tfsky feeds
    expected = bare_backbone_features(backbone, weights, photo, layer)
    assert model.get_layer("encoder_input").trainable is False
    np.testing.assert_allclose(
        segmenter_features(model, photo, layer), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def imagenet_weather_classifier(weights):
    from tfsky.models.classifier import ClassifierModelConfig, build_classifier

    cfg = ClassifierModelConfig(backbone="mobilenetv2", encoder_weights=weights, encoder_batchnorm="frozen")
    model = build_classifier(cfg, 4)
    assert not model.get_layer("block_1_expand_BN").trainable and model.get_layer("logits").trainable
    return model


@pytest.mark.parametrize("head", ["segmenter", "weather classifier"])
def test_shared_imagenet_mobilenetv2_gives_the_bare_backbone_features(shared_data, head):
    weights = shared_data.parent / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    if not weights.is_file():
        pytest.skip(f"{weights} not here")
    if head == "segmenter":
        model = build_segmenter(tiny(backbone="mobilenetv2", encoder_weights=weights), 3)
    else:
        model = imagenet_weather_classifier(weights)
    photo = read_image(shared_data / "sky_ade20k" / "images" / "ADE_train_00000004.jpg")
    photo = tf.image.resize(photo[None].astype(np.float32) / 255.0, (224, 224)).numpy()
    expected = bare_backbone_features("mobilenetv2", weights, photo, "out_relu")
    np.testing.assert_allclose(
        segmenter_features(model, photo, "out_relu"), expected, atol=1e-3 * np.abs(expected).max()
    )
    assert np.abs(expected).max() > 1  # real ImageNet features, not a dead network


def test_frozen_encoder_batchnorm_keeps_its_statistics_through_training_and_saving(tmp_path):
    model = build_segmenter(tiny(backbone="mobilenetv2", encoder_batchnorm="frozen"), 3)
    encoder_bn, decoder_bn = model.get_layer("block_1_expand_BN"), model.get_layer("decoder_stage0a_bn")
    assert not encoder_bn.trainable and decoder_bn.trainable
    before = {bn.name: [w.numpy().copy() for w in bn.weights] for bn in (encoder_bn, decoder_bn)}
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    images = tf.random.stateless_uniform([4, 64, 64, 3], seed=[1, 2])
    model.fit(images, tf.cast(images[..., :1] > 0.5, tf.float32), epochs=2, verbose=0)
    for a, b in zip(before["block_1_expand_BN"], encoder_bn.weights):
        np.testing.assert_array_equal(a, b.numpy())  # gamma, beta, moving mean and variance all untouched
    moved = [not np.array_equal(a, b.numpy()) for a, b in zip(before["decoder_stage0a_bn"], decoder_bn.weights)]
    assert all(moved)  # the decoder's own batch norm learns and tracks its statistics
    save_model(model, tmp_path / "m.keras", ModelInfo(task="segmenter", preprocess=Preprocess(), tile_size=64))
    reloaded, _ = load_model(tmp_path / "m.keras")
    assert not reloaded.get_layer("block_1_expand_BN").trainable
    assert reloaded.get_layer("decoder_stage0a_bn").trainable
