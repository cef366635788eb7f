"""Benchmark the review page's first paint on a 500-frame stream, in headless Chromium.

The stream is camera 623's ten real 1280x720 frames linked 50 times under
distinct time-stamped names (500 frames, each decoded on its own), validated
into a manifest. Two cases, each a fresh browser profile (nothing cached):

1. ``cold``: no thumbnails exist yet; the server makes them as the browser asks;
2. ``warm``: every thumbnail was made once beforehand (the server starts making
   missing ones in the background as it starts).

Measured from navigation start (``performance.timeOrigin``): first contentful
paint, the grid of 500 cards drawn (``window.tfskyPainted``, set two animation
frames after the cards are inserted) and every thumbnail in the first screen
loaded. Target: first paint (grid drawn) under 2 s.

Usage: python scripts/bench_review.py [--frames 500] [--out scripts/results/bench_review.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import tfsky  # noqa: F401

from tfsky.data.streams import StreamsConfig, validate_streams
from tfsky.io.atomic import write_json
from tfsky.models.precision import cpu_record
from tfsky.review.app import review_server
from tfsky.review.browser import headless_chromium, missing_browser
from tfsky.review.thumbnails import THUMBS_FOLDER, ensure_thumbnail

SHARED = Path(os.environ.get("TFSKY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

FIRST_SCREEN_LOADED = """
const cards = Array.from(document.querySelectorAll('.card img'));
const visible = cards.filter((img) => img.getBoundingClientRect().top < window.innerHeight);
return visible.length > 0 && visible.every((img) => img.complete && img.naturalWidth > 0) ? visible.length : 0;
"""


def make_stream(root: Path, frames: int) -> Path:
    sources = sorted((SHARED / "skyfinder_webcams" / "623").glob("*.jpg"))
    folder = root / "frames" / "623"
    folder.mkdir(parents=True)
    for index in range(frames):
        day, minute = divmod(index, 60)
        (folder / f"2020{1 + day // 28:02d}{1 + day % 28:02d}_12{minute:02d}00.jpg").symlink_to(
            sources[index % len(sources)]
        )
    validate_streams(StreamsConfig(root=root / "frames"), out=root / "m")
    return root / "m"


def measure(url: str, profile: Path) -> dict:
    browser = headless_chromium(profile)
    try:
        start = time.perf_counter()
        browser.get(url)
        while not browser.execute_script("return window.tfskyPainted"):
            time.sleep(0.01)
        while not browser.execute_script(FIRST_SCREEN_LOADED):
            time.sleep(0.01)
        loaded_wall = time.perf_counter() - start
        timing = browser.execute_script("""
            const paint = performance.getEntriesByName('first-contentful-paint')[0];
            return {fcp: paint ? paint.startTime : null, grid: window.tfskyPainted,
                    cards: document.querySelectorAll('.card').length};""")
        visible = browser.execute_script(FIRST_SCREEN_LOADED)
        return {
            "first_contentful_paint_ms": timing["fcp"],
            "grid_drawn_ms": timing["grid"],
            "first_screen_thumbnails_loaded_s": round(loaded_wall, 3),
            "cards": timing["cards"],
            "thumbnails_in_first_screen": visible,
        }
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_review.json"))
    args = parser.parse_args()
    if missing_browser():
        raise SystemExit(f"bench_review needs a headless browser: {missing_browser()}")
    with tempfile.TemporaryDirectory(prefix="tfsky-bench-review.") as temp:
        root = Path(temp)
        manifests = make_stream(root, args.frames)
        results = {"frames": args.frames, "load_average": os.getloadavg()}
        for case in ("cold", "warm"):
            if case == "warm":
                started = time.perf_counter()
                stream_dir = root / "frames" / "623"
                for frame in sorted(stream_dir.iterdir()):
                    ensure_thumbnail(manifests / "623" / "stream.json", frame)
                results["make_all_thumbnails_s"] = round(time.perf_counter() - started, 2)
            else:
                shutil.rmtree(manifests / "623" / THUMBS_FOLDER, ignore_errors=True)
            server = review_server(manifests, port=0, warm=case == "warm")
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                results[case] = measure(f"http://127.0.0.1:{server.server_port}/stream/623", root / f"profile-{case}")
            finally:
                server.shutdown()
                server.server_close()
            print(case, results[case], flush=True)
    results["target_grid_drawn_ms"] = 2000
    write_json(args.out, {**results, "cpu": cpu_record()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
