"""The live view in a real browser: headless Chromium (Debian's package) driven by Playwright.

A run of the installed `jaxstyle` command on the tiny network serves its page;
the browser must see the picture change between reports, the plot fill with
points, and its stop button end the run as Ctrl-C does (exit code 130, the
picture and the checkpoint saved). `.ci/run` installs Chromium; elsewhere
these tests are skipped when it is missing.
"""

from __future__ import annotations

import io
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from jaxstyle import images

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("werkzeug")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no Chromium here (CI installs Debian's chromium)", allow_module_level=True)

JAXSTYLE = pathlib.Path(sys.executable).with_name("jaxstyle")
EXAMPLES = pathlib.Path(__file__).parents[1] / "jaxstyle" / "examples"
# What the probe of this machine found Chromium needs to start quietly as root in a closed network.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

class Served:
    """A `jaxstyle` command started with ``--serve 0``, and the URL it printed."""

    def __init__(self, *argv):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen([str(JAXSTYLE), *map(str, argv), "--serve", "0"], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put("")

    def _wait_for_url(self) -> str:
        while True:
            line = self.lines.get(timeout=120)
            assert line, "".join(self.err)
            if "watch the run at " in line:
                return line.split("watch the run at ")[1].split()[0]

    def wait(self) -> int:
        code = self.proc.wait(timeout=120)
        return code

    def stderr(self) -> str:
        return "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def _page(browser):
    # The page forbids `eval` (its Content-Security-Policy); Playwright's waiting helpers need it.
    context = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def _shown(page) -> np.ndarray:
    """The big picture as the screen shows it (grey levels)."""
    png = page.locator("#current").screenshot(animations="disabled")
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.int32)


def _inputs(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The bundled photo and painting, small (a run's reports come every few ms on the tiny network)."""
    content, style = tmp_path / "photo.png", tmp_path / "painting.png"
    images.save_image(content, images.resize_to(images.load_image(EXAMPLES / "chelsea.png"), (48, 72)))
    images.save_image(style, images.resize_to(images.load_image(EXAMPLES / "van_gogh_auvers.png"), (48, 64)))
    return content, style


def test_the_page_shows_the_run_and_its_stop_button_saves_it(browser, tiny_weights, tmp_path):
    content, style = _inputs(tmp_path)
    out = tmp_path / "out.png"
    run = Served("stylize", content, "--style", style, "-o", out, "--weights", tiny_weights, "--size", 48,
                 "--steps", 10**6, "--lr", 0.05)
    try:
        page, errors = _page(browser)
        page.goto(run.url)
        version = "Number(document.getElementById('current').dataset.version || 0)"
        page.wait_for_function(f"{version} > 0", timeout=60000)
        first, seen = _shown(page), page.evaluate(version)
        page.wait_for_function(f"{version} > {seen}")
        second = _shown(page)
        assert first.shape == second.shape and first.std() > 10
        assert np.abs(first - second).max() > 8  # the picture on the screen changed between the reports
        page.wait_for_function("Number(document.getElementById('plot').dataset.points) > 50")
        assert page.text_content("#status") == "running"
        assert page.eval_on_selector("#tiles", "e => e.hidden")  # one picture: no grid
        legend = page.text_content("#legend")
        for term in ("loss", "content", "style", "tv", "style:relu1_1"):
            assert term in legend
        assert page.text_content("#scale") == "1 / 1" and "/ 1000000" in page.text_content("#step")
        shot = tmp_path / "live.png"
        page.screenshot(path=shot)
        assert np.asarray(Image.open(shot).convert("L")).std() > 10  # not a blank page
        page.click("#stop")
        page.wait_for_function("document.body.dataset.status === 'stopped'", timeout=60000)
        assert "interrupted (SIGINT)" in page.text_content("#message")
        assert run.wait() == 130
        assert errors == []
    finally:
        run.kill()
    assert "interrupted (SIGINT)" in run.stderr() and "Traceback" not in run.stderr()
    saved = tmp_path / "out.png.interrupted.png"
    assert images.load_image(saved).shape == (32, 48, 3)
    assert (tmp_path / "out.png.checkpoint.npz").is_file() and not out.exists()


def test_a_batch_fills_a_grid(browser, tiny_weights, tmp_path):
    content, style = _inputs(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        shutil.copy(content, folder / f"p{i}.png")
    run = Served("batch", folder, "--style", style, "-o", tmp_path / "out", "--weights", tiny_weights,
                 "--size", 48, "--steps", 10**6)
    try:
        page, errors = _page(browser)
        page.goto(run.url)
        page.wait_for_function("document.querySelectorAll('#tiles img[data-version]').length === 3", timeout=60000)
        names = page.eval_on_selector_all("#tiles figcaption", "e => e.map(x => x.textContent)")
        assert sorted(names) == ["p0.png", "p1.png", "p2.png"]
        assert page.text_content("#command") == "batch" and "× 3" in page.text_content("#step")
        page.click("#tiles figure:nth-child(2)")  # pins that item in the big view
        assert names[1] in page.text_content("#caption")
        page.click("#stop")
        assert run.wait() == 130
        assert errors == []
    finally:
        run.kill()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.interrupted.png")) == \
        [f"p{i}.png.interrupted.png" for i in range(3)], run.stderr()
