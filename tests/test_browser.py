"""The interactive path in a real browser: JupyterLab started by ``./kit lab`` on a loopback port, Debian's
headless Chromium driven by Playwright, notebook 06 run from the menu, and the interactive generator
asked for another seed: a new image must appear. A screenshot of the generator is saved.

Notebook 06 runs on a copy with small sizes but ``quick=False`` (quick mode draws static figures
instead of widgets). Its folder must not contain "pytest": a kernel whose launching command line
names a batch runner draws static figures too (``coursekit.widgets``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SMALL = {"step_counts": [2, 4], "eval_images": 20, "reference_images": 100, "animation_steps": 3}

pytestmark = [pytest.mark.slow, pytest.mark.notebook]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab():
    """``./kit lab`` on a copy of notebook 06 (small sizes, not quick); yields (url of the notebook, folder)."""
    pytest.importorskip("playwright", reason="playwright (requirements-dev.txt) is missing")
    assert os.path.exists(CHROMIUM), "chromium missing (Debian: apt-get install chromium; ./kit test installs it)"
    course = Path(tempfile.mkdtemp(prefix="coursekit-browser-"))
    (course / "notebooks").mkdir()
    (course / "checkpoints").symlink_to(ROOT / "checkpoints")
    nb = nbformat.read(ROOT / "notebooks" / "06_sampling.ipynb", as_version=4)
    nb.cells[1].source += "\n# the browser test's sizes\n" + "\n".join(f"{k} = {v!r}" for k, v in SMALL.items()) + \
        '\ndevice = "cpu"'
    nbformat.write(nb, course / "notebooks" / "06_sampling.ipynb")
    port, token = free_port(), "coursekit-browser-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(course / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(course / "jupyter-runtime")}
    server = subprocess.Popen([str(ROOT / "kit"), "lab", str(course / "notebooks"), "--no-browser",
                               f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                               "--ServerApp.port_retries=0", "--allow-root"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "JupyterLab did not answer within 2 minutes"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/06_sampling.ipynb?token={token}", course
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(course, ignore_errors=True)


def wait_for(page, locator, timeout_s: float) -> None:
    """Wait for ``locator``. On a loaded machine JupyterLab may ask which kernel to start (the notebook's kernel
    was slow to come up): the dialog's preselected kernel is taken, as a student would, and the wait goes on."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    deadline = time.monotonic() + timeout_s
    while True:
        if dialog.count() and dialog.first.is_visible():
            dialog.first.get_by_role("button", name="Select", exact=True).click()
        try:
            locator.wait_for(timeout=5_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def test_the_interactive_generator_draws_a_new_image_in_the_browser(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, course = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        # a kernel that is up and idle before anything runs (the status bar: "Python 3 (ipykernel) | Idle")
        wait_for(page, page.get_by_text(re.compile(r"\|\s*Idle")).first, timeout_s=300)
        # Run > Run All Cells, as a student would
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        # the generator: the one interactive widget with a sampler menu; its first figure
        generator = page.locator(".widget-interact").filter(has=page.locator("select")).first
        try:
            wait_for(page, generator, timeout_s=600)
        except Exception:
            page.screenshot(path=str(tmp_path / "page.png"), full_page=False)
            print(f"no generator; the page: {tmp_path / 'page.png'}")
            raise
        figure = generator.locator(".jp-OutputArea-output img").first
        figure.wait_for(timeout=300_000)
        before = figure.get_attribute("src")
        # the seed slider, one step to the right (keyboard on its handle, as a person would)
        seed = generator.locator(".widget-slider").filter(has_text="sample_seed").locator(".noUi-handle").first
        seed.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "([el, old]) => { const img = el.querySelector('.jp-OutputArea-output img');"
            " return img && img.getAttribute('src') !== old; }",
            arg=[generator.element_handle(), before], timeout=300_000)
        after = generator.locator(".jp-OutputArea-output img").first.get_attribute("src")
        assert after != before and after.startswith("data:image/png")
        generator.scroll_into_view_if_needed()
        shot = tmp_path / "06_generator.png"
        generator.screenshot(path=str(shot))
        print(f"screenshot of the generator: {shot}")
        assert shot.stat().st_size > 5_000
        browser.close()
