"""`tfsky.models.bundle.ModelKind`: one resolver from the saved sidecar's task (and a cloud model's classes and
sources) to the kind every command, export and the serving client dispatch on."""

from __future__ import annotations

import pytest

from tfsky.data.transforms import Preprocess
from tfsky.errors import InputError
from tfsky.io.atomic import write_json
from tfsky.models.bundle import ModelInfo, ModelKind, info_path, kind_of, load_info, model_kind, require_kind

ALLSKY = {"data": {"sources": [{"kind": "allsky_folder", "name": "wsiseg"}]}}


def info(task: str, classes: int = 1, config: dict | None = None) -> ModelInfo:
    return ModelInfo(task=task, preprocess=Preprocess(), tile_size=64, classes=classes, config=config or {})


@pytest.mark.parametrize(
    ("sidecar", "kind"),
    [
        (info("segmenter"), ModelKind.SEGMENTER),
        (info("segmenter", classes=2), ModelKind.SEGMENTER),  # two classes, not trained on all-sky frames
        (info("segmenter", classes=1, config=ALLSKY), ModelKind.SEGMENTER),
        (info("segmenter", classes=2, config=ALLSKY), ModelKind.CLOUD),
        (info("pix2pix", classes=3), ModelKind.TRANSLATOR),
        (info("vae", classes=3), ModelKind.TRANSLATOR),
        (info("colorize", classes=2), ModelKind.COLORIZER),
        (info("classifier", classes=4), ModelKind.CLASSIFIER),
        (info("from_the_future"), None),
    ],
)
def test_the_kind_comes_from_the_saved_task_and_a_cloud_models_sources(sidecar, kind):
    assert model_kind(sidecar) is kind and sidecar.kind is kind


def test_kinds_are_strings_with_the_names_users_type():
    assert [str(kind) for kind in ModelKind] == ["segmenter", "cloud", "translator", "colorizer", "classifier"]
    assert ModelKind.CLOUD == "cloud" and ModelKind("colorizer") is ModelKind.COLORIZER


def test_a_segmenter_command_takes_a_cloud_model_and_nothing_else(tmp_path):
    require_kind(info("segmenter", classes=2, config=ALLSKY), tmp_path / "m.keras", ModelKind.SEGMENTER)
    with pytest.raises(InputError, match="is a segmenter model, not a weather classifier"):
        require_kind(info("segmenter", classes=2, config=ALLSKY), tmp_path / "m.keras", "classifier")
    with pytest.raises(InputError, match="is a vae model, not a sky segmenter"):
        require_kind(info("vae"), tmp_path / "m.keras", ModelKind.SEGMENTER)
    with pytest.raises(InputError, match="is a segmenter model, not a cloud model"):
        require_kind(info("segmenter"), tmp_path / "m.keras", ModelKind.CLOUD)


def test_kind_of_a_file_reads_its_sidecar_and_is_none_when_it_cannot(tmp_path):
    model = tmp_path / "best.keras"
    assert kind_of(model) is None  # no model file
    model.write_bytes(b"weights")
    assert kind_of(model) is None  # no sidecar
    info_path(model).write_text("{not json")
    assert kind_of(model) is None
    write_json(info_path(model), info("colorize", classes=2).to_json())
    assert kind_of(model) is ModelKind.COLORIZER
    assert load_info(model, kind=ModelKind.COLORIZER).task == "colorize"  # the saved value is unchanged
