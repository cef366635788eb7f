"""Classify image files through a server, resumably: ``tfsky client predict`` with a served weather classifier.

`classify_files` runs a `ServerClassifyTask` with the job runner (`tfsky.batch`),
so inputs, stems, skip-complete and failure reports are those of ``tfsky
client predict`` for a segmenter. Per image ``<out>/<stem>.json`` (condition,
probability, class probabilities, size, server, model, version), and at the end
``<out>/classification.csv``: the files ``tfsky predict`` writes with a local
classifier (`tfsky.predict.classify`). Encoded files are sent as they are;
other 8/16-bit files are re-encoded as PNG (HDR is refused, as locally).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import tensorflow as tf

from tfsky.io.atomic import write_json
from tfsky.io.images import image_size
from tfsky.io.stores import as_path
from tfsky.batch import Decoded, Item, Listener, Report, Task, run_job
from tfsky.predict.classify import classification, read_ldr, sidecar_path, write_classification_table
from tfsky.serving.client import Client
from tfsky.serving.segment_jobs import ENCODED_SUFFIXES, ServerSegmentTask


def classify_files(
    client: Client,
    model: str,
    inputs: Sequence[Path],
    out: str | Path,
    *,
    version: int | None = None,
    label: str | None = None,
    overwrite: bool = False,
    listener: Optional[Listener] = None,
) -> Report:
    """Classify every image of ``inputs`` through ``client`` into ``out``; see the module docstring.

    As for segmentation (`tfsky.serving.segment_jobs.segment_files`), a bad file or an image the server refuses is
    recorded in the report and the job goes on; other server failures stop it. ``out`` may be
    ``s3://bucket/prefix`` (`tfsky.io.stores`): the table is then built from the sidecars in the store.
    """
    task = ServerClassifyTask(client, model, version, label)
    report = run_job(task, inputs, out, overwrite=overwrite, listener=listener)
    write_classification_table(as_path(out), {str(source) for source in (*report.done, *report.skipped)})
    return report


class ServerClassifyTask(Task):
    """The classification sidecar of one image, from a server (runs on the local engine only)."""

    def __init__(self, client: Client, model: str, version: int | None, label: str | None):
        self.client, self.model, self.version, self.label = client, model, version, label

    def outputs(self, stem: Path) -> tuple[Path]:
        return (sidecar_path(stem),)

    def process(self, item: Item, decoded: Decoded, outputs: tuple[Path], listener: Listener) -> None:
        path = item.source
        if path.suffix.lower() in ENCODED_SUFFIXES:
            (height, width), encoded = image_size(path), path.read_bytes()
        else:
            image = read_ldr(path)
            (height, width), encoded = image.shape[:2], tf.io.encode_png(image).numpy()
        answer = self.client.classify_image(self.model, encoded, version=self.version, label=self.label)
        write_json(
            outputs[0],
            {
                "source": str(path),
                "height": int(height),
                "width": int(width),
                **classification(answer.probabilities),
                "server": self.client.server,
                "model": self.model,
                "version": answer.version,
                "label": self.label,
            },
        )

    stops_the_job = ServerSegmentTask.stops_the_job  # the same rule: only a refused image lets the job go on
