"""Test driver: nerfstudio's viewer of a SAHS run in headless Chromium (the viewer test and the docs screenshot).

Needs the ``playwright`` package and a Chromium executable (Debian's ``chromium`` package at
``/usr/bin/chromium``; Playwright's own browser download is never used). Usage::

    .venv/bin/python tests/viewer_browser.py --load-config outputs/.../config.yml --screenshot docs/viewer.png

starts ``ns-viewer`` on the run, opens the page, checks the SAHS panel is there, moves the first
expression slider (or the audio window slider) and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PANEL_LABELS = ("Drive by", "Dataset frame", "View from dataset frame", "Render frames/s")
"""Labels of the SAHS panel every model shows."""


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None when there is none."""
    for candidate in (os.environ.get("SAHS_CHROMIUM"), CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_viewer(config: Path, port: int, log: Path, timeout: float = 180.0) -> subprocess.Popen:
    """``ns-viewer --load-config config`` on 127.0.0.1:``port``; returns once the port accepts connections."""
    exe = Path(sys.executable).with_name("ns-viewer")
    command = [str(exe) if exe.exists() else "ns-viewer", "--load-config", str(config)]
    command += ["--viewer.websocket-port", str(port), "--viewer.websocket-host", "127.0.0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    handle = open(log, "w")  # noqa: SIM115  (closed with the process by the caller)
    proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ns-viewer exited with status {proc.returncode}; log: {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"ns-viewer did not listen on port {port} within {timeout:.0f} s; log: {log}")


def stop_viewer(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ViewerCheck:
    """What :func:`drive_viewer` saw."""

    labels: dict[str, bool] = field(default_factory=dict)
    """Each panel label looked for, and whether it was on the page."""
    moved: str = ""
    """Label of the slider that was moved."""
    mean_change: float = 0.0
    """Mean absolute change of the rendered image (0-255) after moving it."""
    mode_after: str = ""
    """The "Drive by" dropdown's value after moving the slider."""
    resolution: str = ""
    render_fps: str = ""
    """The panel's "Render frames/s" text once the moved slider's render settled."""
    before: np.ndarray | None = None
    after: np.ndarray | None = None


def _row(page, label: str):
    """The panel row (label + input) whose label starts with ``label``."""
    return page.locator("div.mantine-Flex-root", has=page.locator("label", has_text=label)).last


def _set_number(page, label: str, value: float) -> None:
    box = _row(page, label).locator("input.mantine-NumberInput-input").first
    box.scroll_into_view_if_needed()
    box.fill(str(value))
    box.press("Enter")


def _canvas(page) -> np.ndarray:
    from PIL import Image

    shot = page.locator("canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.float32)


def _resolution(page) -> tuple[int, int]:
    """The viewer's "Resolution: WxHpx" line as (width, height); (0, 0) before the first render."""
    text = page.get_by_text("Resolution:").first.inner_text()
    match = re.search(r"(\d+)\s*[x\u00d7]\s*(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _settled(
    page,
    timeout: float,
    max_res: int,
    differs_from: np.ndarray | None = None,
    min_change: float = 0.5,
    ready=lambda: True,
) -> np.ndarray:
    """The canvas once the full-resolution render is shown and stops changing (and, if given, once it
    differs from ``differs_from`` and ``ready()`` holds)."""
    deadline = time.time() + timeout
    last = _canvas(page)
    while time.time() < deadline:
        time.sleep(1.0)
        now = _canvas(page)
        full = max(_resolution(page)) >= max_res - 1
        changed = differs_from is None or float(np.abs(now - differs_from).mean()) > min_change
        if full and changed and ready() and float(np.abs(now - last).mean()) < 0.05:
            return now
        last = now
    return last


def drive_viewer(
    url: str,
    screenshot: Path | None = None,
    max_res: int = 64,
    slider: str = "PC1 (",
    value: float = 3.0,
    timeout: float = 120.0,
    viewport: tuple[int, int] = (1200, 760),
) -> ViewerCheck:
    """Open the viewer at ``url``, check the SAHS panel, move ``slider`` to ``value``, measure the change."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    check = ViewerCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("text=Drive by", timeout=timeout * 1000)
            body = page.inner_text("body")
            for label in (*PANEL_LABELS, slider):
                check.labels[label] = label in body
            # A small render keeps the CPU test quick; hide the training cameras' frustums.
            _set_number(page, "Max res", max_res)
            hide = page.get_by_role("button", name="Hide Train Cams")
            if hide.count():
                hide.first.click()
            dropdown = _row(page, "Drive by").locator("input").first

            def mode() -> str:
                return dropdown.input_value() if dropdown.count() else ""

            check.before = _settled(page, timeout=timeout, max_res=max_res)
            moved = page.locator("label", has_text=slider).first
            check.moved = moved.inner_text()
            mode_before = mode()
            _set_number(page, slider, value)
            check.after = _settled(
                page,
                timeout=timeout,
                max_res=max_res,
                differs_from=check.before,
                ready=lambda: mode_before != "viewer time" or mode() != mode_before,
            )
            check.mean_change = float(np.abs(check.after - check.before).mean())
            check.resolution = page.get_by_text("Resolution:").first.inner_text()
            check.render_fps = _row(page, "Render frames/s").locator("input").first.input_value()
            check.mode_after = mode()
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                moved.scroll_into_view_if_needed()
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path, default=Path("docs/viewer.png"))
    parser.add_argument("--max-res", type=int, default=256)
    parser.add_argument("--slider", default="PC1 (")
    parser.add_argument("--value", type=float, default=2.5)
    args = parser.parse_args(argv)
    port = free_port()
    log = args.screenshot.with_suffix(".viewer.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = start_viewer(args.load_config, port, log)
    try:
        check = drive_viewer(
            f"http://127.0.0.1:{port}", args.screenshot, max_res=args.max_res, slider=args.slider, value=args.value
        )
    finally:
        stop_viewer(proc)
    log.unlink(missing_ok=True)
    print(f"labels {check.labels}; moved {check.moved!r}: mean change {check.mean_change:.2f}; {check.resolution}")
    print(f"screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
