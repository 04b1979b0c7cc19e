"""The HTML plan report in a real browser: headless Chromium renders it, and the screenshot shows the charts.

Skips when Chromium is not installed (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
The screenshot is read with Pillow when present, else with the small PNG reader below (zlib + numpy).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from galvatron_hf.adapters import describe_model
from galvatron_hf.planner.search import search_plan
from galvatron_hf.profiler.builtin_hardware import load_hardware
from galvatron_hf.report import gather_plan_report, write_plan_html
from galvatron_hf.report.plan_html import BUDGET, PART_COLOURS, STRATEGY_COLOURS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)"),
]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


@pytest.mark.parametrize(
    ("model", "gpus", "memory_gb", "batch", "title"),
    [
        ("meta-llama/Llama-2-70b", 64, 73.6, 512, "meta-llama/Llama-2-70b on 64 GPUs"),
        ("t5-large", 4, 10.0, 64, "t5-large on 4 GPUs"),
    ],
)
def test_report_renders_in_chromium(tmp_path, model, gpus, memory_gb, batch, title):
    spec = describe_model(model)
    hardware = load_hardware("h100", -(-gpus // 8))
    result = search_plan(spec, hardware, gpus, memory_gb, global_batch_size=batch)
    assert result.best.plan.pp > 1, "these cases exercise the pipeline timeline"
    report = gather_plan_report(spec, hardware, result.best.plan, result.best.report, memory_gb, result)
    page = write_plan_html(tmp_path / "plan.html", report)
    assert f"<h1>{title}</h1>" in page.read_text()
    pixels = read_png(screenshot(page, tmp_path, width=1100, height=1700))
    assert pixels.shape[:2] == (1700, 1100)
    assert pixels[..., :3].astype(float).std() > 20, "the page rendered blank"
    # the SVG charts drew: the strip's first layout colour, the activations in the memory bars, the budget line
    for colour in (STRATEGY_COLOURS[0], PART_COLOURS["activations"], BUDGET):
        assert count_colour(pixels, colour) > 100, f"no {colour} pixels: a chart did not render"


def screenshot(page: Path, tmp_path: Path, *, width: int, height: int) -> Path:
    png = tmp_path / "plan.png"
    command = [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    return png


def count_colour(pixels: np.ndarray, colour: str) -> int:
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return int((pixels[..., :3] == rgb).all(axis=-1).sum())


# ----- PNG pixels ---------------------------------------------------------------------------------------
def read_png(path: Path) -> np.ndarray:
    """(height, width, channels) uint8 pixels of an 8-bit RGB or RGBA PNG."""
    try:
        from PIL import Image
    except ImportError:
        return _decode_png(path.read_bytes())
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    chunks = _chunks(data)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and colour_type in (2, 6) and not interlace, "expected an 8-bit RGB(A) PNG"
    channels = 3 if colour_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), dtype=np.uint8)
    rows = raw.reshape(height, width * channels + 1)
    pixels = np.zeros((height, width * channels), dtype=np.uint8)
    above = pixels[0]
    for y in range(height):
        pixels[y] = above = _unfilter(int(rows[y, 0]), rows[y, 1:], above, channels)
    return pixels.reshape(height, width, channels)


def _chunks(data: bytes) -> dict[bytes, list[bytes]]:
    chunks: dict[bytes, list[bytes]] = {}
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        chunks.setdefault(kind, []).append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return chunks


def _unfilter(kind: int, row: np.ndarray, above: np.ndarray, channels: int) -> np.ndarray:
    """Undo one row's PNG filter (None, Sub, Up, Average, Paeth); uint8 arithmetic wraps as PNG asks."""
    if kind == 0:
        return row
    if kind == 1:
        return (np.cumsum(row.reshape(-1, channels), axis=0) % 256).astype(np.uint8).reshape(-1)
    if kind == 2:
        return row + above
    line, up = row.tolist(), above.tolist()
    for i in range(len(line)):
        left = line[i - channels] if i >= channels else 0
        if kind == 3:
            line[i] = (line[i] + (left + up[i]) // 2) & 255
            continue
        corner = up[i - channels] if i >= channels else 0
        guess = left + up[i] - corner
        to_left, to_up, to_corner = abs(guess - left), abs(guess - up[i]), abs(guess - corner)
        if to_left <= to_up and to_left <= to_corner:
            line[i] = (line[i] + left) & 255
        else:
            line[i] = (line[i] + (up[i] if to_up <= to_corner else corner)) & 255
    return np.array(line, dtype=np.uint8)
