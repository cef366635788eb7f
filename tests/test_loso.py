"""scripts/loso.py: a fold drops one source; a webcam's daytime frames are told apart by their sky's luminance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tfsky.data.config import SourceConfig
from tfsky.data.streams import NIGHT_LUMINANCE
from tfsky.io.writers import write_png

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import loso  # noqa: E402


def frame(sky_level: float, ground_level: float) -> np.ndarray:
    """A 40x60 grey frame: the top half (the camera's sky) at ``sky_level``, the rest at ``ground_level``."""
    image = np.full((40, 60, 3), round(ground_level * 255), np.uint8)
    image[:20] = round(sky_level * 255)
    return image


def test_daytime_is_the_sky_luminance_of_each_frame_and_the_whole_frame_without_sky(tmp_path):
    sky = np.zeros((40, 60), np.uint8)
    sky[:20] = 255
    write_png(tmp_path / "cam1-mask.png", sky)
    write_png(tmp_path / "cam2-mask.png", np.zeros((40, 60), np.uint8))  # a camera that sees no sky
    frames = {
        "cam1/day.png": frame(NIGHT_LUMINANCE + 0.05, 0.0),  # dark ground, bright sky: day
        "cam1/night.png": frame(NIGHT_LUMINANCE - 0.05, 1.0),  # bright ground (street lights), dark sky: night
        "cam2/day.png": frame(0.0, 1.0),  # no sky: the whole frame's mean (0.5) decides
        "cam2/night.png": frame(0.0, 0.3),
    }
    for name, image in frames.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_png(tmp_path / name, image)
    source = SourceConfig(kind="camera_folder", name="webcams", images=tmp_path)
    assert loso.daytime_files(source) == {"cam1/day.png", "cam2/day.png"}


def test_a_fold_names_itself_after_the_left_out_source_and_an_unknown_source_is_one_line(shared_data):
    from tfsky.config import load_config
    from tfsky.train.config import SegmenterConfig

    recipe = load_config(SegmenterConfig, REPO / "configs" / "sky_ldr_cpu_scratch.yaml")
    cfg, source = loso.fold_config(recipe, "sky_gopro")
    assert cfg.name == f"{recipe.name}-without-sky_gopro" and source.name == "sky_gopro"
    assert "sky_gopro" not in [s.name for s in cfg.data.sources]
    assert Path(cfg.data.cache) == Path(recipe.data.cache).parent / cfg.name
    with pytest.raises(SystemExit, match="--leave-out nowhere: not a source of the recipe"):
        loso.fold_config(recipe, "nowhere")


def test_an_evaluation_is_named_by_what_differs_from_the_recipe_prediction():
    assert loso.variant("none", 1.0) == "none"
    assert loso.variant("flip2", 1.5) == "flip2-x1.5"
    assert loso.variant("none", 1.0, 384) == "none-tile384"
    assert loso.variant("rot4", 2.0, 256) == "rot4-x2-tile256"
    assert loso.variant("none", 1.0, None, 0.5) == "none-t0.5"
    assert loso.variant("none", 1.0, None, 0.5, drop_enclosed=True) == "none-t0.5-dropenclosed"
