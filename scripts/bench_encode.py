"""Measure the encoders of `tfsky predict`'s outputs on one real 8K prediction: OpenCV vs Pillow, PNG levels.

The arrays are those of a real 8192x4096 sky prediction (`--prob`, a ``_prob.png`` or ``_prob.tif``
from ``tfsky predict``; by default the 16-bit map is synthesised from a real photo's brightness, see
below): the 16-bit probability map, the 0/255 mask and the RGB overlay. Each encoder writes to memory
(no disk), best of ``--repeat`` runs; every PNG is decoded again and compared, so a lossy result is
reported as such. JPEG is the overlay only (lossy by design, quality 92 as today).

Also timed: drawing the overlay (`overlay`, a lookup table for 8-bit photos, vs the float blend it
reproduces) and, with ``--model``, loading a ``.keras`` file with `tfsky.models.bundle.load_model` vs
``tf.keras.models.load_model``.

Usage: python scripts/bench_encode.py [--prob out/x_prob.png] [--model best.keras] [--out scripts/results/bench_encode.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import tfsky  # noqa: F401

HERE = Path(__file__).resolve()
PHOTO = HERE.parents[2] / "shared" / "data" / "hdr_polyhaven_1k" / "quarry_01_1k.hdr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prob", type=Path, help="A _prob.png/_prob.tif of tfsky predict (default: synthesised).")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", type=Path, help="A .keras model: time loading it both ways.")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "bench_encode.json")
    args = parser.parse_args()
    import cv2
    import numpy as np

    from tfsky.io.atomic import write_json

    from tfsky.models.precision import cpu_record
    from tfsky.io.images import read_image
    from tfsky.predict.outputs import Maps, OutputPaths, display_rgb, hdr_exposure, overlay

    if args.prob:
        prob = read_image(args.prob, channels=None)[..., 0]
        prob = prob.astype(np.float32) / 65535 if prob.dtype == np.uint16 else prob
        photo = cv2.resize(
            display_rgb(read_image(PHOTO), hdr_exposure(read_image(PHOTO))),
            prob.shape[::-1],
            interpolation=cv2.INTER_LINEAR,
        )
    else:  # a smooth, real-looking map: the photo's brightness through a steep sigmoid
        small = read_image(PHOTO)
        rgb = display_rgb(small, hdr_exposure(small))
        photo = cv2.resize(rgb, (8192, 4096), interpolation=cv2.INTER_LINEAR)
        grey = photo.mean(axis=-1)
        prob = 1 / (1 + np.exp(-(grey - 0.55) * 12)).astype(np.float32)
    image = np.rint(photo * 255).astype(np.uint8)
    maps = Maps.of(OutputPaths.for_stem(Path("x"), "png16"), prob, 0.5)
    shown = overlay(image, maps.mask)
    arrays = {"prob16": maps.prob, "mask": maps.mask, "overlay": shown}
    results = {
        "image": f"{prob.shape[1]}x{prob.shape[0]}",
        "source": str(args.prob or PHOTO.name),
        "load_average": os.getloadavg(),
        "png": {},
        "jpeg_overlay_q92": {},
    }
    for name, array in arrays.items():
        rows = results["png"][name] = {}
        for level in (1, 3, 6):
            rows[f"opencv_level{level}"] = _opencv_png(array, level, args.repeat)
        for name in ("sub", "up"):  # one fixed row filter instead of libpng's per-row choice; run-length zlib
            rows[f"opencv_level1_{name}_rle"] = _opencv_png(
                array,
                1,
                args.repeat,
                [
                    cv2.IMWRITE_PNG_FILTER,
                    getattr(cv2, f"IMWRITE_PNG_FILTER_{name.upper()}"),
                    cv2.IMWRITE_PNG_STRATEGY,
                    cv2.IMWRITE_PNG_STRATEGY_RLE,
                ],
            )
        for level in (1, 3, 6):
            rows[f"pillow_level{level}"] = _pillow_png(array, level, args.repeat)
    results["jpeg_overlay_q92"] = {
        "opencv": _timed(
            lambda: cv2.imencode(".jpg", shown[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1], args.repeat, None
        ),
        "pillow": _timed(lambda: _pillow_bytes(shown, "JPEG", quality=92), args.repeat, None),
    }
    mask = maps.mask
    results["overlay_draw"] = {
        "lookup": _timed(lambda: overlay(image, mask), args.repeat, None),
        "float_blend": _timed(lambda: _float_overlay(image, mask), args.repeat, None),
        "bit_identical": bool(np.array_equal(overlay(image, mask), _float_overlay(image, mask))),
    }
    if args.model:
        import tensorflow as tf

        from tfsky.models.bundle import custom_objects, load_model

        results["model_load_seconds"] = {
            "tfsky_load_model": _seconds(lambda: load_model(args.model)),
            "tf_keras_load_model": _seconds(
                lambda: tf.keras.models.load_model(args.model, compile=False, custom_objects=custom_objects())
            ),
        }
    write_json(args.out, {**results, "cpu": cpu_record()})
    print(json.dumps(results, indent=1))


def _float_overlay(image, mask):
    """The float blend `overlay` draws for images without its lookup table."""
    from tfsky.predict.outputs import OVERLAY_COLOUR, OVERLAY_OPACITY

    alpha = mask[..., None] * np.float32(OVERLAY_OPACITY / 255)
    return np.rint(255 * (image / np.float32(255) * (1 - alpha) + OVERLAY_COLOUR * alpha)).astype(np.uint8)


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return round(time.perf_counter() - start, 2)


def _opencv_png(array, level, repeat, options=()):
    import cv2

    bgr = array[..., ::-1].copy() if array.ndim == 3 else array
    params = [cv2.IMWRITE_PNG_COMPRESSION, level, *options]
    return _timed(
        lambda: cv2.imencode(".png", bgr, params)[1].tobytes(),
        repeat,
        lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED),
        array,
        bgr=True,
    )


def _pillow_png(array, level, repeat):
    from PIL import Image

    return _timed(
        lambda: _pillow_bytes(array, "PNG", compress_level=level),
        repeat,
        lambda data: np.asarray(Image.open(io.BytesIO(data))),
        array,
    )


def _pillow_bytes(array, fmt, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)  # a uint16 map becomes 16-bit grey (I;16)
    return buffer.getvalue()


def _timed(encode, repeat, decode, expected=None, bgr=False) -> dict:
    best, data = float("inf"), b""
    for _ in range(repeat):
        start = time.perf_counter()
        data = encode()
        best = min(best, time.perf_counter() - start)
    row = {"seconds": round(best, 3), "megabytes": round(len(data) / 1e6, 2)}
    if decode is not None:
        decoded = decode(bytes(data))
        if bgr and decoded.ndim == 3:
            decoded = decoded[..., ::-1]
        row["lossless"] = bool(np.array_equal(decoded.astype(expected.dtype), expected))
    return row


import numpy as np  # noqa: E402  (used by the helpers above)

if __name__ == "__main__":
    main()
