"""Start the real viewer in its own process and drive it with Debian's chromium through playwright."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Screenshots of each browser test, kept after the run for people to look at (out/ is not committed).
SHOTS = ROOT / "out" / "test-screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def viewer_process(args: Sequence[str], timeout_s: float = 90.0,
                   env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``slicer-xai viewer ARGS`` and yield the URL it prints once it is ready."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("XAIExplain", "XAIRobustness", ".")), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "XAICommandLine", "viewer", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, seen = None, []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                if process.poll() is not None:
                    break
                continue
            seen.append(line)
            match = re.search(r"open (http\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise RuntimeError("viewer did not start:\n" + "".join(seen[-30:]))
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


def open_page(instance, url: str, width: int = 1400, height: int = 900):
    page = instance.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("#run", timeout=60_000)
    wait_for_views(page)
    return page


def wait_for_views(page, timeout_s: float = 30.0) -> None:
    """Wait until the slice views show an image (rendered frames arrive after the page)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if views_pixels(page).mean() > 5:
            return
        time.sleep(0.5)
    raise AssertionError("the views stayed black")


def views_pixels(page) -> np.ndarray:
    """The views area of the page as an RGB array."""
    from io import BytesIO

    from PIL import Image

    png = page.locator("#views").screenshot()
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(np.int16)


def heat_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels coloured by the heat map (saturated, red dominant) — not grey anatomy, not the green outline."""
    r, g = rgb[..., 0], rgb[..., 1]
    return (rgb.max(axis=-1) - rgb.min(axis=-1) > 60) & (r > 110) & (r >= g)


def outline_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the green reference-lesion outline (LESION_OUTLINE, about (64, 224, 97))."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (g > 150) & (g - r > 70) & (g - b > 50)


def quadrants(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The four views of the Quad View layout: coronal, 3-D (top), sagittal, axial (bottom)."""
    h, w = rgb.shape[:2]
    return {"coronal": rgb[: h // 2, : w // 2], "3d": rgb[: h // 2, w // 2:],
            "sagittal": rgb[h // 2:, : w // 2], "axial": rgb[h // 2:, w // 2:]}


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def run_and_wait(page, timeout_ms: int = 180_000) -> None:
    """Press Run and wait for the result card (and the views' next frames)."""
    page.click("#run")
    page.wait_for_selector("#result-card", state="visible", timeout=timeout_ms)
    time.sleep(2.0)


def choose(page, select_id: str, option: str) -> None:
    page.locator(f"#{select_id}").click(force=True)  # vuetify's field overlays the input
    page.get_by_role("option", name=option, exact=True).click()


def download(page, selector: str, folder: Path) -> Path:
    """Click the download button ``selector`` and save what the browser receives into ``folder``."""
    with page.expect_download() as event:
        page.click(selector)
    saved = folder / event.value.suggested_filename
    event.value.save_as(saved)
    return saved
