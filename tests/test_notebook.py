"""docs/notebooks/jaxstyle.ipynb runs top to bottom (tiny random weights, small sizes), so it cannot rot.

The test executes the committed file itself, not the cells of
scripts/make_notebook.py, and a second test checks that the committed file is
that script's output, executed with the real VGG19.
"""

import base64
import importlib.util
import io
import math
import os
import pathlib
import re

import pytest
from PIL import Image

nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
import nbformat  # noqa: E402 (a dependency of nbclient)

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOK = ROOT / "docs" / "notebooks" / "jaxstyle.ipynb"
SIZE, STEPS = 64, 20


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "scripts" / "make_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _printed(notebook) -> str:
    """Everything the code cells printed, in order."""
    return "".join(out.text for cell in _code_cells(notebook) for out in cell.outputs if out.output_type == "stream")


def _numbers(pattern: str, text: str) -> list[float]:
    """The number captured by ``pattern`` at each of its matches (one group), or (two groups) both."""
    return [float(x) for match in re.findall(pattern, text) for x in (match if isinstance(match, tuple) else (match,))]


def _check_ran_in_order(notebook) -> None:
    """Every code cell ran once, top to bottom, without an error output."""
    code = _code_cells(notebook)
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert all(cell.outputs for cell in code), "every code cell prints or draws something"


def test_committed_notebook_is_the_scripts_output_with_the_real_network():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == _maker().CELLS, \
        "the notebook's cells differ from scripts/make_notebook.py's: run the script again"
    _check_ran_in_order(notebook)
    assert "vgg19: 16 convolutions, 20,024,384 parameters" in _printed(notebook)
    assert NOTEBOOK.stat().st_size < 2_500_000


def test_notebook_runs_top_to_bottom_on_the_tiny_network(tiny_weights):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code_cells(notebook):
        cell.outputs, cell.execution_count = [], None
    env = {**os.environ, "JAXSTYLE_WEIGHTS": str(tiny_weights),
           "JAXSTYLE_NOTEBOOK_SIZE": str(SIZE), "JAXSTYLE_NOTEBOOK_STEPS": str(STEPS)}
    _maker().execute(notebook, timeout=300, env=env)

    _check_ran_in_order(notebook)
    text = _printed(notebook)
    assert "tiny: 10 convolutions" in text  # the weights variable reached the kernel

    # The vmapped float32 Gram matrices against NumPy float64, relative to the largest entry.
    relative = _numbers(r"Gram check relu\d_1: .* relative to max \|G\| = (\S+)", text)
    assert len(relative) == 3 and all(r < 1e-5 for r in relative), relative

    # jax.grad's rate of increase against a central finite difference (tiny net, eps 3e-3: 1.5 % apart).
    [norm, finite] = _numbers(r"\|grad L\| = (\S+), finite difference (\S+)", text)
    assert finite == pytest.approx(norm, rel=0.05)

    # stylize lowered the objective, and ran at the size asked for.
    [first, last] = _numbers(r"loss (\S+) at the first step, (\S+) at the last", text)
    assert math.isfinite(last) and last < 0.9 * first
    assert f"({STEPS} Adam steps at {SIZE}x" in text
    pictures = [Image.open(io.BytesIO(base64.b64decode(out.data["image/png"])))
                for cell in _code_cells(notebook) if "optimize.stylize(" in cell.source
                for out in cell.outputs if "image/png" in out.get("data", {})]
    assert [p.size[0] for p in pictures] == [SIZE]  # the live display's last picture

    # The sweep's three style weights reached the vmapped program: three different pictures.
    distances = _numbers(r"style_weight \S+: mean \|output - photo\| = (\S+)", text)
    assert len(distances) == 3 and all(math.isfinite(d) for d in distances)
    assert len(set(distances)) == 3, distances
