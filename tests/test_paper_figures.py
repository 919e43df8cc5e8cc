"""scripts/paper_figures.py runs end to end (tiny network, tiny size) and lays its figures out as expected."""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).parent.parent


def test_paper_figures_end_to_end(tiny_weights, tmp_path):
    out = tmp_path / "figures"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "paper_figures.py"), "--out", str(out),
                           "--size", "32", "--steps", "3", "--weights", str(tiny_weights)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = {}
    for name in ("content_reconstructions", "style_reconstructions", "ratio_vs_layers"):
        sheet = Image.open(out / f"{name}.png")
        assert sheet.mode == "RGB"
        sizes[name] = sheet.size
    # Five pictures per row (at least 5 x 32 px wide); the ratio figure has four rows (one per
    # ratio) of the same height as the one-row figures (contact sheets have a 4 px margin).
    for width, _ in sizes.values():
        assert width >= 5 * 32
    one_row = sizes["content_reconstructions"][1] - 4
    assert sizes["style_reconstructions"][1] - 4 == one_row
    assert sizes["ratio_vs_layers"][1] - 4 == 4 * one_row


def test_figure_grids_and_labels(tiny_weights):
    spec = importlib.util.spec_from_file_location("paper_figures", ROOT / "scripts" / "paper_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.one_hot(2, 5) == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert module.up_to(2, 5) == (1.0, 1.0, 1.0, 0.0, 0.0)
    assert module.paper_name("relu4_2") == "conv4_2"

    from jaxstyle import images, optimize, weights
    from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE

    params, meta = weights.load(tiny_weights)
    network = optimize.Network(weights.model_for(meta), params)
    figs = module.figures(images.load_image(DEMO_CONTENT), images.load_image(DEMO_STYLE), network,
                          size=32, steps=3)
    tiles, labels, columns = figs["ratio_vs_layers"]
    assert len(tiles) == 20 and columns == 5
    assert labels[0] == "a/b=1, to conv1_1" and labels[-1] == "a/b=0.001, to conv5_1"
    assert figs["content_reconstructions"][1] == ["conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2"]
    # Each content reconstruction used its own layer: the pictures differ from one another.
    recon = figs["content_reconstructions"][0]
    assert all(t.shape == recon[0].shape for t in recon)
    assert min(np.abs(recon[i] - recon[j]).mean() for i in range(5) for j in range(i + 1, 5)) > 1e-3
