"""The review web app: thumbnails, flags and labels of each stream; edits written back to its manifest.

Routes (JSON in and out under ``/api``; every error is ``{"error": "..."}``
with a 4xx status and leaves the manifest as it was)::

    GET  /                              the page (a stream list; ``/stream/<id>`` opens one)
    GET  /api/streams                   [{id, camera, frames, left, version}]
    GET  /api/streams/<id>              the stream: version, moved_from, frames, conditions, left, camera_mask
                                        (where its sky mask came from, or null), sky_disagrees
    POST /api/streams/<id>/edit         {"version", "frame", "field", "value"} -> the stream
    POST /api/streams/<id>/undo         {"version"} -> the stream
    GET  /thumbs/<id>/<frame>           the frame's cached thumbnail (JPEG)
    GET  /skymask/<id>/<frame>          the thumbnail with the stream's camera sky mask tinted over it
    GET  /frames/<id>/<frame>           the frame itself
    GET  /demo/<id>/<panel>/<frame>     a model panel of the frame (`tfsky.review.demo`: overlay, translated,
                                        composite), when the app was given the models

The server answers only requests whose ``Host`` is one of its own addresses
(``127.0.0.1:<port>``, ``localhost:<port>``, the bound host): a web page
whose name is rebound to this machine (DNS rebinding) gets 403. Requests that
change a manifest also need the page's own ``Origin``, so another site's page
cannot post edits from the reviewer's browser. Bodies over `MAX_BODY_BYTES`
are refused (413) before they are read, and a connection silent for
``read_timeout`` seconds is closed.

A stream's id is its manifest's folder name (the camera, for manifests tfsky
writes). Every edit carries the version the page loaded; an edit against an
older version is refused with 409 (`StaleVersion`), so two tabs never
overwrite each other's changes. Frame names are looked up in the manifest:
a name that is not one of its frames is 404, one with a path in it 400.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Collection, Optional

from flask import Flask, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from tfsky.config import quoted
from tfsky.data.streams import (
    CONDITIONS,
    EditError,
    StaleVersion,
    Stream,
    apply_edit,
    manifest_files,
    read_manifest,
    undo_edit,
    update_manifest,
)
from tfsky.errors import TfskyError
from tfsky.review.demo import FrameDemo
from tfsky.review.thumbnails import camera_mask_of, ensure_thumbnail, warm_thumbnails

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # an edit is ~100 bytes
READ_TIMEOUT = 30.0  # seconds a connection may stay silent, mid-request or idle
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def stream_ids(manifests: Path) -> dict[str, Path]:
    """``{stream id: manifest path}`` of a manifest file or a folder of them (see `manifest_files`)."""
    return {path.parent.name: path for path in manifest_files(manifests)}


def create_app(
    manifests: Path,
    warm: bool = True,
    demo: Optional[FrameDemo] = None,
    hosts: Collection[str] = ("localhost", "127.0.0.1"),
) -> Flask:
    """The app over the manifests in ``manifests``.

    With ``warm``, missing thumbnails are made in the background; ``demo``
    adds the model panels of a frame (segmenter overlay, translation, composite).
    ``hosts`` are the ``Host`` header values it answers (`review_server` sets its own addresses).
    """
    index = stream_ids(Path(manifests))
    panels = demo.panels if demo else []
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider has it
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["REVIEW_HOSTS"] = set(hosts)
    if warm:
        streams = [(path, read_manifest(path)) for path in index.values()]
        warm_thumbnails((path, stream.path(frame)) for path, stream in streams for frame in stream.frames)

    def manifest(stream_id: str) -> Path:
        if stream_id not in index:
            raise ApiError(404, f"unknown stream {stream_id!r} (streams: {', '.join(sorted(index))})")
        return index[stream_id]

    def stream_frame(stream_id: str, file: str) -> tuple[Path, Stream, Path]:
        """The manifest path, the stream (read once) and the path of its frame ``file``."""
        path = manifest(stream_id)
        stream = read_manifest(path)
        checked_frame_name(file)
        try:
            return path, stream, stream.path(stream.frame(file))
        except KeyError:
            raise ApiError(404, f"stream {stream_id!r} has no frame {file!r}") from None

    def frame_path(stream_id: str, file: str) -> tuple[Path, Path]:
        path, _, frame = stream_frame(stream_id, file)
        return path, frame

    def respond(stream_id: str, stream: Stream):
        return jsonify(stream_json(stream_id, stream) | {"demo": panels})

    @app.before_request
    def own_page_only():
        if request.host not in app.config["REVIEW_HOSTS"]:
            raise ApiError(
                403,
                f"Host {quoted(request.host)} is not an address of this review server "
                f"({', '.join(sorted(app.config['REVIEW_HOSTS']))})",
            )
        if request.method not in SAFE_METHODS and request.headers.get("Origin") != f"http://{request.host}":
            raise ApiError(
                403,
                f"changes are accepted only from this server's page (Origin http://{request.host}); "
                f"got Origin {quoted(request.headers.get('Origin'))}",
            )

    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        return jsonify(error=err.message), err.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(err: RequestEntityTooLarge):
        return jsonify(error=f"request body over the limit of {MAX_BODY_BYTES} bytes"), 413

    @app.errorhandler(ClientDisconnected)
    def body_cut_short(err: ClientDisconnected):  # a stalled body hits the socket's read timeout
        return jsonify(error="request body not received in full (stalled past the read timeout, or cut)"), 408

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):  # unknown routes, wrong methods: JSON like every other answer
        return jsonify(error=err.description), err.code

    @app.errorhandler(Exception)
    def internal_error(err: Exception):  # a bug: its traceback goes to the log, the page still gets JSON
        app.logger.exception("review request failed")
        return jsonify(error=f"internal error ({type(err).__name__}); see the server's log"), 500

    @app.errorhandler(TfskyError)
    def library_error(err: TfskyError):  # the most specific class wins: a stale version, a bad edit, a bad file
        status = 409 if isinstance(err, StaleVersion) else 400 if isinstance(err, EditError) else 422
        return jsonify(error=str(err)), status

    @app.get("/")
    @app.get("/stream/<stream_id>")
    def page(stream_id: Optional[str] = None):
        return send_from_directory(STATIC, "review.html")

    @app.get("/static/<name>")
    def static_file(name: str):
        return send_from_directory(STATIC, name)

    @app.get("/api/streams")
    def list_streams():
        rows = []
        for stream_id, path in index.items():
            stream = read_manifest(path)
            rows.append(
                {
                    "id": stream_id,
                    "camera": stream.camera,
                    "frames": len(stream.frames),
                    "left": left_to_review(stream),
                    "version": stream.version,
                }
            )
        return jsonify(rows)

    @app.get("/api/streams/<stream_id>")
    def get_stream(stream_id: str):
        return respond(stream_id, read_manifest(manifest(stream_id)))

    @app.post("/api/streams/<stream_id>/edit")
    def edit(stream_id: str):
        path = manifest(stream_id)
        body = json_body()
        frame, field = body.get("frame"), body.get("field")
        if field != "moved_from":
            checked_frame_name(frame)
        if "value" not in body:
            raise ApiError(400, "the request needs a 'value' (null clears a review or the moved mark)")
        value = body["value"]
        if field == "moved_from" and value is not None:
            checked_frame_name(value)
        return respond(stream_id, update_manifest(path, body["version"], lambda s: apply_edit(s, frame, field, value)))

    @app.post("/api/streams/<stream_id>/undo")
    def undo(stream_id: str):
        path = manifest(stream_id)
        return respond(stream_id, update_manifest(path, json_body()["version"], undo_edit))

    @app.get("/thumbs/<stream_id>/<path:file>")
    def thumb(stream_id: str, file: str):
        path, frame = frame_path(stream_id, file)
        thumbnail = ensure_thumbnail(path, frame)
        if thumbnail is None:
            raise ApiError(404, f"frame {file!r} cannot be read")
        return send_file(thumbnail, mimetype="image/jpeg", max_age=3600)

    @app.get("/skymask/<stream_id>/<path:file>")
    def skymask_thumb(stream_id: str, file: str):
        path, stream, frame = stream_frame(stream_id, file)
        camera_mask = camera_mask_of(stream)
        if camera_mask is None:
            raise ApiError(404, f"stream {stream_id!r} has no camera sky mask: run tfsky streams skymask on it")
        thumbnail = ensure_thumbnail(path, frame, camera_mask[0])
        if thumbnail is None:
            raise ApiError(404, f"frame {file!r} or the camera mask {camera_mask[0]} cannot be read")
        return send_file(thumbnail, mimetype="image/jpeg", max_age=0)

    @app.get("/demo/<stream_id>/<panel>/<path:file>")
    def demo_panel(stream_id: str, panel: str, file: str):
        path, frame = frame_path(stream_id, file)
        if panel not in panels:
            given = (
                f"this server makes {', '.join(panels)}"
                if panels
                else "start the server with --segmenter and/or --translator"
            )
            raise ApiError(404, f"no {panel!r} panel: {given}")
        assert demo is not None  # (without one there are no panels)
        return send_file(demo.panel(path, frame, panel), mimetype="image/jpeg", max_age=3600)

    @app.get("/frames/<stream_id>/<path:file>")
    def full_frame(stream_id: str, file: str):
        _, frame = frame_path(stream_id, file)
        if not frame.is_file():
            raise ApiError(404, f"frame {file!r} not found at {frame}")
        return send_file(frame)

    return app


def review_server(
    manifests: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    warm: bool = True,
    demo: Optional[FrameDemo] = None,
    read_timeout: float = READ_TIMEOUT,
):
    """A threaded WSGI server for the app (``port`` 0 picks a free one: ``server.server_port``).

    It answers only ``Host`` values naming it (loopback names and ``host``, with the bound port).
    Werkzeug's per-request log lines are off (warnings still show): hundreds of
    thumbnail requests per page would bury the one line the command prints.
    """
    from werkzeug.serving import WSGIRequestHandler, make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(manifests, warm, demo)
    timed_handler = type("TimedRequestHandler", (WSGIRequestHandler,), {"timeout": read_timeout})
    server = make_server(host, port, app, threaded=True, request_handler=timed_handler)
    names = {"127.0.0.1", "localhost", f"[{host}]" if ":" in host else host}
    app.config["REVIEW_HOSTS"] = {f"{name}:{server.server_port}" for name in names}
    return server


def is_loopback(host: str) -> bool:
    """Whether ``host`` serves this machine only (``--host 0.0.0.0`` serves every network it is on)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_frame_name(name) -> str:
    """``name`` when it is a plain file name; a path (``../x``, ``a/b``) or a non-string is a 400."""
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"'frame' must be a frame file name; got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ApiError(400, f"frame name {name!r} is not a plain file name")
    return name


def json_body() -> dict:
    """The request's JSON object with an integer 'version'; anything else is a 400."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if isinstance(body.get("version"), bool) or not isinstance(body.get("version"), int):
        raise ApiError(400, "the request needs the integer 'version' of the stream it was made on")
    return body


def left_to_review(stream: Stream) -> int:
    return sum(frame.review is None for frame in stream.frames)


def stream_json(stream_id: str, stream: Stream) -> dict:
    """What the page draws: the stream's frames with their flags, labels and reviews, and the label choices."""
    conditions = list(dict.fromkeys([*CONDITIONS, *(f.condition for f in stream.frames if f.condition)]))
    camera_mask = camera_mask_of(stream)
    return {
        "id": stream_id,
        "camera": stream.camera,
        "version": stream.version,
        "moved_from": stream.moved_from,
        "conditions": conditions,
        "left": left_to_review(stream),
        "undo": len(stream.edits),
        "camera_mask": camera_mask[1] if camera_mask else None,
        "sky_disagrees": stream.skymask["sky_disagrees"] if stream.skymask else [],
        "frames": [dataclasses.asdict(frame) for frame in stream.frames],
    }
