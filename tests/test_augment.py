"""Paired augmentation: image and mask stay aligned under every geometric op; HDR photometric jitter."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfsky.data.augment import affine_transforms, apply_affine, photometric, random_affine
from tfsky.data.config import AugmentConfig

SIZE = 64
# Fill of the test image: never exactly 0 or 1, and no bilinear mix of it with 0/1 labels is either,
# so a pixel whose value is exactly 0 or 1 was sampled from the label area only.
FILL = 0.5
IDENTITY = dict(rotation=0.0, shift_x=0.0, shift_y=0.0, shear=0.0, zoom_x=1.0, zoom_y=1.0, flip=0.0)
SINGLE_OPS = {
    "rotation": dict(rotation=30.0),
    "shift": dict(shift_x=12.6, shift_y=-7.3),
    "shear": dict(shear=20.0),
    "zoom": dict(zoom_x=0.7, zoom_y=1.25),
    "flip": dict(flip=1.0),
    "all": dict(rotation=-13.0, shift_x=-5.5, shift_y=9.2, shear=-8.0, zoom_x=1.2, zoom_y=0.8, flip=1.0),
}


def label_image(batch: int = 1, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """A blocky random 0/1 label (8-pixel cells) as mask, and an image whose channel 0 is that label."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, size=(batch, SIZE // 8, SIZE // 8))
    mask = np.kron(cells, np.ones((8, 8)))[..., None].astype(np.float32)
    noise = rng.random((batch, SIZE, SIZE, 2)).astype(np.float32)
    return tf.constant(np.concatenate([mask, noise], axis=-1)), tf.constant(mask)


def transforms(batch: int = 1, **params) -> tf.Tensor:
    values = {**IDENTITY, **params}
    return affine_transforms(SIZE, SIZE, **{k: tf.fill([batch], float(v)) for k, v in values.items()})


def assert_aligned(image: np.ndarray, mask: np.ndarray) -> int:
    """Wherever the warped label channel is exactly 0 or 1 the warped mask must equal it; fill -> mask 0.

    Returns the number of pixels checked.
    """
    label = image[..., 0]
    exact = (label == 0) | (label == 1)
    np.testing.assert_array_equal(mask[..., 0][exact], label[exact])
    assert np.all(mask[..., 0][label == FILL] == 0)
    return int(exact.sum())


def test_identity_transform_is_exact():
    image, mask = label_image()
    warped_image, warped_mask = apply_affine(image, mask, transforms(), fill=FILL)
    np.testing.assert_array_equal(warped_image.numpy(), image.numpy())
    np.testing.assert_array_equal(warped_mask.numpy(), mask.numpy())


@pytest.mark.parametrize("op", sorted(SINGLE_OPS))
def test_each_geometric_op_keeps_image_and_mask_aligned(op):
    image, mask = label_image()
    warped_image, warped_mask = apply_affine(image, mask, transforms(**SINGLE_OPS[op]), fill=FILL)
    checked = assert_aligned(warped_image.numpy(), warped_mask.numpy())
    assert checked > 0.5 * SIZE * SIZE  # most pixels are checked, not just a few
    assert not np.array_equal(warped_mask.numpy(), mask.numpy())  # the op did move the label


def test_random_transforms_keep_image_and_mask_aligned():
    image, mask = label_image(batch=16, seed=3)
    cfg = AugmentConfig(rotation=25, shift=0.3, shear=15, zoom=0.3, horizontal_flip=True)
    matrices = random_affine(tf.constant([4, 2]), 16, SIZE, SIZE, cfg)
    warped_image, warped_mask = apply_affine(image, mask, matrices, fill=FILL)
    assert assert_aligned(warped_image.numpy(), warped_mask.numpy()) > 0.4 * 16 * SIZE * SIZE
    assert len({tuple(row) for row in np.round(matrices.numpy(), 5)}) == 16  # one transform per sample


def test_alignment_check_catches_a_one_pixel_misalignment():
    image, mask = label_image()
    warped_image, _ = apply_affine(image, mask, transforms(rotation=10.0), fill=FILL)
    _, shifted_mask = apply_affine(image, mask, transforms(rotation=10.0, shift_x=1.0), fill=FILL)
    with pytest.raises(AssertionError):
        assert_aligned(warped_image.numpy(), shifted_mask.numpy())


def test_flip_and_rotation_match_exact_array_ops():
    image, mask = label_image()
    flipped, flipped_mask = apply_affine(image, mask, transforms(flip=1.0))
    np.testing.assert_array_equal(flipped.numpy(), image.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(flipped_mask.numpy(), mask.numpy()[:, :, ::-1])
    rotated, rotated_mask = apply_affine(image, mask, transforms(rotation=90.0))
    np.testing.assert_allclose(rotated.numpy(), np.rot90(image.numpy(), k=1, axes=(1, 2)), atol=1e-4)
    np.testing.assert_array_equal(rotated_mask.numpy(), np.rot90(mask.numpy(), k=1, axes=(1, 2)))


def test_integer_shift_moves_pixels_and_fills_the_gap():
    image, mask = label_image()
    shifted, shifted_mask = apply_affine(image, mask, transforms(shift_x=5.0, shift_y=-3.0), fill=FILL)
    # output (y, x) samples input (y - 3, x + 5)
    np.testing.assert_array_equal(shifted.numpy()[0, 3:, : SIZE - 5], image.numpy()[0, : SIZE - 3, 5:])
    np.testing.assert_array_equal(shifted_mask.numpy()[0, 3:, : SIZE - 5], mask.numpy()[0, : SIZE - 3, 5:])
    assert np.all(shifted.numpy()[0, :3] == FILL) and np.all(shifted_mask.numpy()[0, :3] == 0)


def test_warp_matches_tensorflows_projective_transform_in_a_dataset():
    """The OpenCV warp is a drop-in for ImageProjectiveTransformV3 (bilinear image, nearest uint8 class ids)."""
    rng = np.random.default_rng(5)
    image = tf.constant(rng.random((16, SIZE, SIZE, 3), dtype=np.float32))
    mask = tf.constant(rng.integers(0, 3, (16, SIZE, SIZE, 1), dtype=np.uint8))
    matrices = random_affine(tf.constant([5, 6]), 16, SIZE, SIZE, AugmentConfig(rotation=25, shear=15))
    dataset = tf.data.Dataset.from_tensors((image, mask)).map(lambda i, m: apply_affine(i, m, matrices, fill=FILL))
    warped_image, warped_mask = next(iter(dataset))
    assert warped_image.shape == image.shape and warped_mask.dtype == tf.uint8

    def reference(tensor: tf.Tensor, interpolation: str, fill: float) -> np.ndarray:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(tensor, tf.float32), transforms=matrices, output_shape=[SIZE, SIZE],
            fill_value=fill, interpolation=interpolation, fill_mode="CONSTANT",
        ).numpy()  # fmt: skip

    np.testing.assert_allclose(warped_image.numpy(), reference(image, "BILINEAR", FILL), atol=1e-4)
    np.testing.assert_array_equal(warped_mask.numpy(), reference(mask, "NEAREST", 0.0))


def test_random_affine_is_reproducible_and_identity_when_ranges_are_zero():
    cfg = AugmentConfig()
    first = random_affine(tf.constant([1, 2]), 4, SIZE, SIZE, cfg).numpy()
    np.testing.assert_array_equal(first, random_affine(tf.constant([1, 2]), 4, SIZE, SIZE, cfg).numpy())
    assert not np.array_equal(first, random_affine(tf.constant([1, 3]), 4, SIZE, SIZE, cfg).numpy())
    off = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=False)
    np.testing.assert_array_equal(random_affine(tf.constant([1, 2]), 4, SIZE, SIZE, off).numpy(), transforms(4).numpy())


def test_photometric_scales_each_sample_by_its_own_exposure_within_range():
    radiance = tf.fill([32, 4, 4, 3], 0.37)
    out = photometric(radiance, tf.constant([7, 7]), AugmentConfig(exposure_ev=2.0, gamma=0.0)).numpy()
    stops = np.log2(out / 0.37)
    assert np.allclose(stops, stops[:, :1, :1, :1], atol=1e-5)  # one factor per sample
    assert np.all(np.abs(stops) <= 2.0 + 1e-5) and np.ptp(stops[:, 0, 0, 0]) > 1.0


def test_photometric_gamma_raises_radiance_to_a_power_in_range():
    radiance = tf.fill([32, 2, 2, 1], 3.0)
    out = photometric(radiance, tf.constant([1, 9]), AugmentConfig(exposure_ev=0.0, gamma=0.5)).numpy()
    powers = np.log(out) / np.log(3.0)
    assert np.all(np.abs(np.log(powers)) <= 0.5 + 1e-5) and np.ptp(powers) > 0.2
