"""Colorize image files through a server, resumably: ``tfsky client predict`` with a served colorizer.

`colorize_files` runs a `ServerColorizeTask` with the job runner (`tfsky.batch`), so inputs, stems,
skip-complete and failure reports are those of ``tfsky client predict`` for a segmenter, and the output
is the one ``tfsky colorize`` writes: ``<out>/<stem>_colour.png``, the server's 8-bit RGB PNG as it
came (``colorize_image``). Encoded files are sent as they are; other 8/16-bit files are re-encoded as
PNG (HDR is refused, as locally).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from tfsky.io.atomic import write_bytes
from tfsky.batch import Decoded, Item, Listener, Report, Task, run_job
from tfsky.predict.colorize import ColorizeTask
from tfsky.serving.client import Client
from tfsky.serving.segment_jobs import ServerSegmentTask, encoded_ldr


def colorize_files(
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
    """Colorize every image of ``inputs`` through ``client`` into ``out``; see the module docstring.

    As for segmentation (`tfsky.serving.segment_jobs.segment_files`), a bad file or an image the server refuses is
    recorded in the report and the job goes on; other server failures stop it.
    """
    return run_job(
        ServerColorizeTask(client, model, version, label), inputs, out, overwrite=overwrite, listener=listener
    )


class ServerColorizeTask(Task):
    """The colour frame of one image, from a server (runs on the local engine only)."""

    def __init__(self, client: Client, model: str, version: int | None, label: str | None):
        self.client, self.model, self.version, self.label = client, model, version, label

    outputs = ColorizeTask.outputs  # the file ``tfsky colorize`` writes

    def process(self, item: Item, decoded: Decoded, outputs: list[Path], listener: Listener) -> None:
        encoded = encoded_ldr(item.source, "colorizer")
        write_bytes(outputs[0], self.client.colorize_image(self.model, encoded, version=self.version, label=self.label))

    stops_the_job = ServerSegmentTask.stops_the_job  # the same rule: only a refused image lets the job go on
