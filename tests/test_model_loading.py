"""`tfsky.models.bundle.load_model` reads a ``.keras`` archive's weights from memory (tf-keras's own loader
seeks inside the zip member, which Python 3.11 answers by re-reading it from the start): the model it
returns is the one tf-keras loads, weight for weight, including tfsky's custom layers."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from test_predict import tiny_segmenter
from tfsky.data.transforms import Preprocess
from tfsky.errors import InputError
from tfsky.models.bundle import ModelInfo, custom_objects, info_path, load_model, save_model
from tfsky.models.vae import LatentSample


def tf_keras_load(path):
    return tf.keras.models.load_model(path, compile=False, custom_objects=custom_objects())


def assert_same_model(ours, theirs, shape):
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), theirs.get_weights()))
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_array_equal(ours(x).numpy(), theirs(x).numpy())


def test_a_segmenter_loads_weight_for_weight_as_tf_keras_loads_it(tmp_path):
    path = tiny_segmenter(tmp_path / "seg.keras")
    model, info = load_model(path)
    assert info.task == "segmenter" and model.optimizer is None  # uncompiled, like compile=False
    assert_same_model(model, tf_keras_load(path), (1, 32, 32, 3))


def test_custom_layers_load_too(tmp_path):
    tf.keras.utils.set_random_seed(1)
    inputs = tf.keras.Input((8,))
    mean = tf.keras.layers.Dense(4)(inputs)
    log_var = tf.keras.layers.Dense(4)(inputs)
    sample = LatentSample(name="z")([mean, log_var])
    path = tmp_path / "vae_part.keras"
    save_model(
        tf.keras.Model(inputs, [mean, log_var, sample]),
        path,
        ModelInfo(task="vae", preprocess=Preprocess(), tile_size=32),
    )
    model, _ = load_model(path)
    theirs = tf_keras_load(path)
    assert isinstance(model.get_layer("z"), LatentSample)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), theirs.get_weights()))


def test_an_archive_without_its_weights_is_one_clear_error(tmp_path):
    good = tiny_segmenter(tmp_path / "seg.keras")
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(broken, "w") as target:
        for name in source.namelist():
            if name != "model.weights.h5":
                target.writestr(name, source.read(name))
    shutil.copy(info_path(good), info_path(broken))
    with pytest.raises(InputError, match="cannot load model") as err:
        load_model(broken)
    assert str(broken) in str(err.value)
