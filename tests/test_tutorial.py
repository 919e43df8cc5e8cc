"""docs/tutorial.md runs as written (with tiny random weights), so it cannot rot."""

import importlib.util
import pathlib

import numpy as np
from PIL import Image

from jaxstyle import vgg

ROOT = pathlib.Path(__file__).parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("run_tutorial", ROOT / "scripts" / "run_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_runs_and_writes_its_pictures(tiny_weights, tmp_path, monkeypatch):
    runner = _runner()
    blocks = runner.code_blocks((ROOT / "docs" / "tutorial.md").read_text())
    assert len(blocks) >= 8
    monkeypatch.setenv("JAXSTYLE_WEIGHTS", str(tiny_weights))
    monkeypatch.chdir(tmp_path)
    namespace = runner.run(ROOT / "docs" / "tutorial.md")
    pictures = sorted(p.name for p in (tmp_path / "docs" / "images" / "tutorial").iterdir())
    assert pictures == ["grad_steps.png", "gradient.png", "jit_steps.png", "stylize.png",
                        "sweep_style_weight_1.png", "sweep_style_weight_10.png", "sweep_style_weight_100.png"]
    assert Image.open(tmp_path / "docs/images/tutorial/stylize.png").size == (192, 128)
    # The sweep's three pictures differ: the style weight reached the vmapped program.
    a, b, c = (np.asarray(Image.open(tmp_path / f"docs/images/tutorial/sweep_style_weight_{w}.png"), float)
               for w in (1, 10, 100))
    assert np.abs(a - c).mean() > 0.5 and np.abs(a - b).mean() > 0.1
    # One forward and one input-gradient convolution per conv layer up to relu5_1.
    convs = vgg.layer_names(vgg.ARCHITECTURES["tiny"][0])
    convs = [n for n in convs[: convs.index("relu5_1")] if n.startswith("conv")]
    assert namespace["hlo"].count("convolution(") == 2 * len(convs)


def test_every_tutorial_picture_is_in_the_repo():
    text = (ROOT / "docs" / "tutorial.md").read_text()
    for name in ["grad_steps", "gradient", "jit_steps", "stylize", "sweep_style_weight_1"]:
        assert f"images/tutorial/{name}.png" in text
        assert (ROOT / "docs" / "images" / "tutorial" / f"{name}.png").exists()
