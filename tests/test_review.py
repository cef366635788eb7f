"""The stream review web app: its JSON API (edits, undo, conflicts, bad requests) and the page in headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfsky.data.streams import StreamsConfig, read_manifest, update_manifest, validate_stream, validate_streams
from tfsky.review.app import create_app, review_server
from tfsky.review.browser import headless_chromium, missing_browser
from tfsky.review.thumbnails import THUMB_WIDTH, thumbnail_path

from test_streams import scene, write_jpeg

FRAMES = [f"20200101_{hour:02d}0000.jpg" for hour in range(8, 16)]


@pytest.fixture
def manifests(tmp_path) -> Path:
    """One validated stream ``cam`` of 8 daylight frames (300 x 400), its manifest in ``<tmp>/m/cam``."""
    for index, name in enumerate(FRAMES):
        write_jpeg(
            tmp_path / "frames" / "cam" / name,
            np.clip(scene(5, (300, 400)).astype(int) + index, 0, 255).astype(np.uint8),
        )
    validate_streams(StreamsConfig(root=tmp_path / "frames"), out=tmp_path / "m")
    return tmp_path / "m"


@pytest.fixture
def client(manifests):
    return create_app(manifests, warm=False).test_client()


def post(client, path, body, origin="http://localhost"):
    """POST ``body`` as JSON from the page's own origin (the test client's Host is ``localhost``)."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers={"Origin": origin})


def manifest_file(manifests: Path) -> Path:
    return manifests / "cam" / "stream.json"


def test_stream_json_lists_frames_flags_and_what_is_left(client):
    stream = client.get("/api/streams/cam").get_json()
    assert [f["file"] for f in stream["frames"]] == FRAMES
    assert stream["left"] == 8 and stream["version"] == 1 and stream["undo"] == 0
    assert "clear" in stream["conditions"]
    assert client.get("/api/streams").get_json() == [
        {"id": "cam", "camera": "cam", "frames": 8, "left": 8, "version": 1}
    ]


def test_edits_are_written_to_the_manifest_with_the_previous_value_and_undo_restores_it(client, manifests):
    reject = post(
        client, "/api/streams/cam/edit", {"version": 1, "frame": FRAMES[2], "field": "review", "value": "rejected"}
    )
    assert reject.status_code == 200, reject.get_json()
    relabel = post(
        client, "/api/streams/cam/edit", {"version": 2, "frame": FRAMES[3], "field": "condition", "value": "overcast"}
    )
    assert relabel.get_json()["version"] == 3 and relabel.get_json()["left"] == 7
    stream = read_manifest(manifest_file(manifests))
    assert stream.version == 3
    assert (stream.frames[2].review, stream.frames[2].usable) == ("rejected", False)
    assert (stream.frames[3].condition, stream.frames[3].label_source) == ("overcast", "human")
    assert stream.edits[-1] == {
        "frame": FRAMES[3],
        "field": "condition",
        "value": "overcast",
        "previous": {"condition": None, "confidence": None, "label_source": None},
    }
    undone = post(client, "/api/streams/cam/undo", {"version": 3}).get_json()
    assert undone["frames"][3]["condition"] is None and undone["undo"] == 1
    undone = post(client, "/api/streams/cam/undo", {"version": 4}).get_json()
    assert undone["frames"][2]["review"] is None and undone["frames"][2]["usable"] and undone["left"] == 8
    assert read_manifest(manifest_file(manifests)).edits == []
    assert not list((manifests / "cam").glob(".stream.*.part.json"))  # no temp left behind


def test_camera_moved_from_a_frame_marks_it_and_every_later_frame(client, manifests):
    marked = post(
        client, "/api/streams/cam/edit", {"version": 1, "frame": None, "field": "moved_from", "value": FRAMES[5]}
    ).get_json()
    assert [f["reason"] for f in marked["frames"]] == [""] * 5 + ["moved"] * 3
    assert not any(f["usable"] for f in marked["frames"][5:])
    stream = validate_stream(read_manifest(manifest_file(manifests)), StreamsConfig())  # survives re-validation
    assert [f.reason for f in stream.frames] == [""] * 5 + ["moved"] * 3
    cleared = post(
        client, "/api/streams/cam/edit", {"version": 2, "frame": None, "field": "moved_from", "value": None}
    ).get_json()
    assert all(f["usable"] and not f["reason"] for f in cleared["frames"])


def test_a_stale_version_is_a_409_and_keeps_the_other_tabs_change(client, manifests):
    first = post(
        client, "/api/streams/cam/edit", {"version": 1, "frame": FRAMES[0], "field": "review", "value": "accepted"}
    )
    assert first.status_code == 200
    before = manifest_file(manifests).read_bytes()
    second = post(
        client, "/api/streams/cam/edit", {"version": 1, "frame": FRAMES[1], "field": "review", "value": "rejected"}
    )
    assert second.status_code == 409
    assert "changed since you loaded it (your version 1, now 2); reload" in second.get_json()["error"]
    assert manifest_file(manifests).read_bytes() == before
    assert read_manifest(manifest_file(manifests)).frames[0].review == "accepted"


BAD_REQUESTS = [
    (
        "post",
        "/api/streams/nope/edit",
        {"version": 1, "frame": FRAMES[0], "field": "review", "value": "accepted"},
        404,
        "unknown stream 'nope'",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": "../../etc/passwd", "field": "review", "value": "rejected"},
        400,
        "is not a plain file name",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": None, "field": "moved_from", "value": "../x.jpg"},
        400,
        "is not a plain file name",
    ),
    ("post", "/api/streams/cam/edit", "{not json", 400, "must be a JSON object"),
    ("post", "/api/streams/cam/edit", [1, 2], 400, "must be a JSON object"),
    (
        "post",
        "/api/streams/cam/edit",
        {"frame": FRAMES[0], "field": "review", "value": "accepted"},
        400,
        "integer 'version'",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": "missing.jpg", "field": "review", "value": "accepted"},
        400,
        "has no frame 'missing.jpg'",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": FRAMES[0], "field": "usable", "value": True},
        400,
        "unknown field 'usable'",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": FRAMES[0], "field": "review", "value": "maybe"},
        400,
        "review must be one of accepted, rejected",
    ),
    (
        "post",
        "/api/streams/cam/edit",
        {"version": 1, "frame": FRAMES[0], "field": "condition", "value": "<b>"},
        400,
        "condition must be a lower-case name",
    ),
    ("post", "/api/streams/cam/edit", {"version": 1, "frame": FRAMES[0], "field": "review"}, 400, "needs a 'value'"),
    ("post", "/api/streams/cam/undo", {"version": 1}, 400, "nothing to undo"),
    ("get", "/thumbs/cam/..%2F..%2Fstream.json", None, 400, "is not a plain file name"),
    ("get", "/frames/cam/missing.jpg", None, 404, "has no frame 'missing.jpg'"),
    ("get", "/api/streams/nope", None, 404, "unknown stream 'nope' (streams: cam)"),
]


@pytest.mark.parametrize(
    "method, path, body, status, message", BAD_REQUESTS, ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD_REQUESTS]
)
def test_bad_requests_are_a_clear_4xx_and_leave_the_manifest_untouched(
    client, manifests, method, path, body, status, message
):
    before = manifest_file(manifests).read_bytes()
    response = post(client, path, body) if method == "post" else client.get(path)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert manifest_file(manifests).read_bytes() == before


def test_thumbnails_are_made_once_small_and_cached_beside_the_manifest(client, manifests):
    response = client.get(f"/thumbs/cam/{FRAMES[0]}")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    cached = thumbnail_path(manifest_file(manifests), FRAMES[0])
    with Image.open(cached) as im:
        assert im.width == THUMB_WIDTH and im.height == round(300 * THUMB_WIDTH / 400)
    made = cached.stat().st_mtime_ns
    time.sleep(0.01)
    assert client.get(f"/thumbs/cam/{FRAMES[0]}").data == cached.read_bytes()
    assert cached.stat().st_mtime_ns == made


def with_camera_mask(manifests: Path) -> Path:
    """Record a learnt camera mask (sky = the top third) in the stream, as `tfsky streams skymask` does."""
    mask = np.zeros((300, 400), np.uint8)
    mask[:100] = 255
    path = manifests / "cam" / "camera_mask.png"
    Image.fromarray(mask).save(path)
    record = {"mask": str(path), "model": "m", "frames_used": 8, "sky_disagrees": [FRAMES[3]]}
    stream = read_manifest(manifest_file(manifests))
    update_manifest(manifest_file(manifests), stream.version, lambda s: dataclasses.replace(s, skymask=record))
    return path


def decoded(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"), dtype=np.float32)


def test_the_camera_sky_mask_is_tinted_over_the_thumbnail_only_where_it_says_sky(client, manifests):
    missing = client.get(f"/skymask/cam/{FRAMES[0]}")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "stream 'cam' has no camera sky mask: run tfsky streams skymask on it"
    assert client.get("/api/streams/cam").get_json()["camera_mask"] is None

    with_camera_mask(manifests)
    stream = client.get("/api/streams/cam").get_json()
    assert stream["camera_mask"] == "learnt from 8 frames" and stream["sky_disagrees"] == [FRAMES[3]]
    plain, tinted = decoded(client.get(f"/thumbs/cam/{FRAMES[0]}")), decoded(client.get(f"/skymask/cam/{FRAMES[0]}"))
    assert plain.shape == tinted.shape
    sky_rows, ground_rows = slice(0, 60), slice(70, None)  # the mask's edge is at row 64 of 144
    change = tinted - plain
    assert change[sky_rows, :, 1].mean() < -40 and change[sky_rows, :, [0, 2]].mean() > -10  # magenta: less green
    assert np.abs(change[ground_rows]).mean() < 3  # JPEG noise only


# --- the page in a real browser -----------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium driven by Selenium; the test skips only when the browser is not installed."""
    missing = missing_browser()
    if missing:
        pytest.skip(f"the headless browser test needs Debian's chromium and chromium-driver: {missing}")
    chrome = headless_chromium(tmp_path / "chromium-profile")
    yield chrome
    chrome.quit()


@pytest.fixture
def server_url(manifests):
    server = review_server(manifests, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def test_page_rejects_with_a_key_changes_a_label_and_both_survive_a_reload(browser, server_url, manifests, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(f"{server_url}/stream/cam")
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    assert browser.find_element(By.ID, "left").text == "8 of 8 left to review"
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)  # select the second frame
    body.send_keys("r")  # reject it (the selection moves on to the third)
    wait_for(lambda: browser.find_element(By.ID, "left").text == "7 of 8 left to review")
    body.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT, "n")  # back to the first, then the next one left: the third
    assert "selected" in browser.find_elements(By.CSS_SELECTOR, ".card")[2].get_attribute("class")
    Select(browser.find_element(By.ID, "label")).select_by_value("overcast")  # relabel the third frame
    wait_for(lambda: read_manifest(manifest_file(manifests)).frames[2].condition == "overcast")

    browser.refresh()
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert "rejected" in cards[1].get_attribute("class")
    assert cards[2].find_element(By.CSS_SELECTOR, ".label").text == "overcast"
    stream = read_manifest(manifest_file(manifests))
    assert (stream.frames[1].review, stream.frames[2].condition, stream.frames[2].label_source) == (
        "rejected",
        "overcast",
        "human",
    )
    assert browser.find_element(By.ID, "message").get_attribute("hidden")  # no error shown

    wait_for(
        lambda: all(
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in browser.find_elements(By.CSS_SELECTOR, ".card img")
        )
    )
    shot = tmp_path / "review.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # thumbnails, badges and text, not a blank page
    assert len(np.unique(pixels.reshape(-1, 3)[::50], axis=0)) > 200


def test_a_second_tab_is_told_its_page_is_stale(browser, server_url, manifests):
    from selenium.webdriver.common.by import By

    browser.get(f"{server_url}/stream/cam")
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{server_url}/stream/cam")
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    browser.find_element(By.TAG_NAME, "body").send_keys("a")  # tab 2 accepts frame 1
    wait_for(lambda: read_manifest(manifest_file(manifests)).frames[0].review == "accepted")
    browser.switch_to.window(first)
    browser.find_element(By.TAG_NAME, "body").send_keys("r")  # tab 1, stale, tries to reject it
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    assert message.startswith("Not saved:") and "the stream changed since you loaded it" in message
    assert read_manifest(manifest_file(manifests)).frames[0].review == "accepted"


# --- model panels of a frame --------------------------------------------------------------------

from test_translate import segmenter_file, translator_file  # noqa: E402,F401  (tiny models, as fixtures)


def test_frame_panels_show_the_sky_overlay_translation_and_composite(manifests, segmenter_file, translator_file):
    from tfsky.review.demo import FrameDemo, panel_path

    client = create_app(manifests, warm=False, demo=FrameDemo(segmenter_file, translator_file)).test_client()
    assert client.get("/api/streams/cam").get_json()["demo"] == ["overlay", "translated", "composite"]
    frame = np.asarray(Image.open(manifests.parent / "frames" / "cam" / FRAMES[0]).convert("RGB"), np.float32)
    shown = {}
    for panel in ("overlay", "translated", "composite"):
        response = client.get(f"/demo/cam/{panel}/{FRAMES[0]}")
        assert response.status_code == 200 and response.mimetype == "image/jpeg"
        shown[panel] = np.asarray(Image.open(panel_path(manifest_file(manifests), FRAMES[0], panel)), np.float32)
        assert shown[panel].shape == frame.shape
    assert np.abs(shown["overlay"] - frame).mean() > 5  # the sky is tinted
    assert np.abs(shown["translated"] - frame).mean() > 5
    missing = client.get(f"/demo/cam/depth/{FRAMES[0]}")
    assert (
        missing.status_code == 404 and "this server makes overlay, translated, composite" in missing.get_json()["error"]
    )


def test_without_models_a_panel_request_says_how_to_get_one(client):
    response = client.get(f"/demo/cam/overlay/{FRAMES[0]}")
    assert response.status_code == 404
    assert "start the server with --segmenter and/or --translator" in response.get_json()["error"]
    assert client.get("/api/streams/cam").get_json()["demo"] == []


def test_the_review_command_serves_the_manifests_on_loopback(manifests):
    import os
    import subprocess
    import sys
    import urllib.request

    command = [sys.executable, "-m", "tfsky.cli.main", "streams", "review", str(manifests), "--port", "0"]
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    try:
        line = server.stdout.readline()
        assert line.startswith(f"reviewing {manifests} at http://127.0.0.1:"), line + server.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(f"{url}api/streams", timeout=10) as response:
            assert json.loads(response.read())[0]["id"] == "cam"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_simultaneous_updates_of_one_version_let_exactly_one_through(manifests):
    """Eight threads edit version 1 at once: one edit is written, seven are refused, none is lost silently."""
    from concurrent.futures import ThreadPoolExecutor

    from tfsky.data.streams import StaleVersion, apply_edit, update_manifest

    def reject(file: str):
        try:
            update_manifest(manifest_file(manifests), 1, lambda s: apply_edit(s, file, "review", "rejected"))
            return file
        except StaleVersion:
            return None

    with ThreadPoolExecutor(8) as pool:
        written = [file for file in pool.map(reject, FRAMES) if file]
    assert len(written) == 1
    stream = read_manifest(manifest_file(manifests))
    assert stream.version == 2 and [f.file for f in stream.frames if f.review] == written


# --- hostile text in a manifest and a full disk, in the browser ----------------------------------------------------

HOSTILE = '<img src=x onerror="window.pwned=(window.pwned||0)+1">'


def test_hostile_labels_names_and_details_render_as_text_and_run_nothing(browser, manifests):
    """A manifest written by hand or by an older tfsky: its text reaches the page as text, in every view."""
    import dataclasses

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tfsky.data.streams import write_manifest

    stream = read_manifest(manifest_file(manifests))
    first = dataclasses.replace(stream.frames[0], condition=HOSTILE, reason=HOSTILE, detail=HOSTILE, usable=False)
    hostile = dataclasses.replace(stream, camera=HOSTILE, frames=[first, *stream.frames[1:]], version=0)
    write_manifest(hostile, manifest_file(manifests))
    server = review_server(manifests, port=0, warm=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        browser.get(f"{url}/")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "table.streams td"))
        assert browser.find_elements(By.CSS_SELECTOR, "table.streams td")[1].text == HOSTILE
        browser.get(f"{url}/stream/cam")
        wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
        card = browser.find_elements(By.CSS_SELECTOR, ".card")[0]
        assert card.find_element(By.CSS_SELECTOR, ".label").text == HOSTILE
        assert (
            browser.execute_script("return Array.from(document.getElementById('label').options, o => o.value)").count(
                HOSTILE
            )
            == 1
        )
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)  # the frame dialog shows reason and detail
        assert HOSTILE in wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "dialog p").text)
        time.sleep(0.5)  # a broken image's onerror would have fired by now
        assert browser.execute_script("return window.pwned") is None
        assert browser.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    finally:
        server.shutdown()
        server.server_close()


def full_disk(monkeypatch) -> None:
    """Every atomic write runs out of space half-way, as on a full disk (the temp file gets half the bytes)."""
    import errno
    import os

    import tfsky.io.atomic as atomic

    def write_half(path, data: bytes) -> None:
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(atomic, "write_bytes", write_half)


def test_an_edit_on_a_full_disk_is_a_json_error_and_the_page_stays_on_the_frame(
    browser, server_url, manifests, monkeypatch
):
    from selenium.webdriver.common.by import By

    before = manifest_file(manifests).read_bytes()
    full_disk(monkeypatch)
    browser.get(f"{server_url}/stream/cam")
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    browser.find_element(By.TAG_NAME, "body").send_keys("r")  # reject the first frame: not saved
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    assert message == f"Not saved: {manifest_file(manifests)}: no space left on device", message
    assert "selected" in browser.find_elements(By.CSS_SELECTOR, ".card")[0].get_attribute("class")
    assert manifest_file(manifests).read_bytes() == before
    assert sorted(p.name for p in (manifests / "cam").iterdir() if p.is_file()) == [".stream.json.lock", "stream.json"]


def test_the_sky_mask_toggle_swaps_every_card_and_flags_frames_that_disagree(browser, manifests):
    from selenium.webdriver.common.by import By

    with_camera_mask(manifests)
    server = review_server(manifests, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/stream/cam")
        wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
        button = browser.find_element(By.ID, "skymask")
        assert button.is_displayed() and "learnt from 8 frames" in button.get_attribute("title")
        badges = [
            card.find_element(By.CSS_SELECTOR, ".badges").text
            for card in browser.find_elements(By.CSS_SELECTOR, ".card")
        ]
        assert [i for i, text in enumerate(badges) if "sky disagrees" in text] == [3]

        def pictures():
            images = browser.find_elements(By.CSS_SELECTOR, ".card img")
            loaded = all(
                browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                for img in images
            )
            return loaded and [img.get_attribute("src").split("/")[3] for img in images]

        browser.find_element(By.TAG_NAME, "body").send_keys("s")
        assert wait_for(lambda: set(pictures() or []) == {"skymask"})
        assert button.get_attribute("aria-pressed") == "true" and button.text == "Hide sky mask"
        button.click()
        assert wait_for(lambda: set(pictures() or []) == {"thumbs"})
        assert browser.find_element(By.ID, "message").get_attribute("hidden")
    finally:
        server.shutdown()
        server.server_close()


def test_a_stream_without_a_camera_mask_has_no_toggle(browser, server_url):
    from selenium.webdriver.common.by import By

    browser.get(f"{server_url}/stream/cam")
    wait_for(lambda: browser.execute_script("return window.tfskyPainted"))
    assert not browser.find_element(By.ID, "skymask").is_displayed()
    browser.find_element(By.TAG_NAME, "body").send_keys("s")  # the key does nothing either
    sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, ".card img")]
    assert all("/thumbs/" in src for src in sources)
