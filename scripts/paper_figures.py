"""Reproduce the figures of Gatys, Ecker & Bethge (CVPR 2016) with the bundled images.

    python scripts/paper_figures.py --out docs/images/figures --size 128

Writes three labelled PNG figures into ``--out``:

- ``content_reconstructions.png`` (the paper's Fig. 1, bottom): white noise
  optimised to match the photo's activations at one layer each, conv1_2 ...
  conv5_2. Low layers keep the exact pixels; high layers keep the objects'
  arrangement but not their detail.
- ``style_reconstructions.png`` (Fig. 1, top): white noise optimised to match
  the painting's Gram matrices on growing sets of layers, conv1_1; conv1_1 +
  conv2_1; ... up to conv5_1. The texture's scale grows with depth.
- ``ratio_vs_layers.png`` (Fig. 3): the content/style weight ratio (rows)
  against the deepest style layer used (columns).

Each figure is one `jaxstyle.batch.sweep`: its pictures are the items of one
compiled program (the layers switched on and off by per-item layer weights;
L-BFGS's items run one after another inside it, Adam's are vmapped). The paper's "conv" layer names are the responses after the ReLU
(Caffe runs its ReLUs in place), so ``relu4_2`` here is the paper's conv4_2.
Runs with the real VGG19 (``--weights`` or the installed one) or any weights
file with these layer names.
"""

from __future__ import annotations

import argparse
import pathlib

from jaxstyle import batch, batch_io, images, optimize, runtime, weights
from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
from jaxstyle.config import StylizeConfig

CONTENT_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
RATIOS = (1.0, 0.1, 0.01, 0.001)  # content weight / style weight, the figure's rows


def paper_name(layer: str) -> str:
    """``relu4_2`` -> ``conv4_2``: the paper's name of the same response."""
    return layer.replace("relu", "conv")


def one_hot(i: int, n: int) -> tuple[float, ...]:
    return tuple(1.0 if j == i else 0.0 for j in range(n))


def up_to(i: int, n: int) -> tuple[float, ...]:
    return tuple(1.0 if j <= i else 0.0 for j in range(n))


def _images(results) -> list:
    """The pictures of a sweep; a point whose loss diverged stops the script with its error."""
    for _, image in results:
        if isinstance(image, Exception):
            raise image
    return [image for _, image in results]


def figures(content, style, network: optimize.Network, *, size: int, steps: int, optimizer: str = "lbfgs",
            lr: float = 0.05, seed: int = 0):
    """name -> (tiles, labels, columns) of each figure."""
    n = len(STYLE_LAYERS)
    noise = StylizeConfig(size=size, steps=steps, optimizer=optimizer, lr=lr, init="noise", seed=seed,
                          tv_weight=0.0)
    out = {}

    config = noise.replace(content_layers=CONTENT_LAYERS, style_layers=(), style_weight=0.0)
    results = batch.sweep(content, style, network, config,
                          grid={"content_layer_weights": [one_hot(i, n) for i in range(n)]})
    out["content_reconstructions"] = (_images(results), [paper_name(l) for l in CONTENT_LAYERS], n)

    config = noise.replace(content_layers=(), style_layers=STYLE_LAYERS, content_weight=0.0)
    results = batch.sweep(content, style, network, config,
                          grid={"style_layer_weights": [up_to(i, n) for i in range(n)]})
    labels = ["conv1_1"] + [f"conv1_1 ... {paper_name(l)}" for l in STYLE_LAYERS[1:]]
    out["style_reconstructions"] = (_images(results), labels, n)

    config = noise.replace(style_layers=STYLE_LAYERS, content_weight=1.0, tv_weight=StylizeConfig.tv_weight)
    results = batch.sweep(content, style, network, config,
                          grid={"style_weight": [1.0 / r for r in RATIOS],
                                "style_layer_weights": [up_to(i, n) for i in range(n)]})
    labels = [f"a/b={1 / point['style_weight']:g}, to {paper_name(STYLE_LAYERS[int(sum(point['style_layer_weights'])) - 1])}"
              for point, _ in results]
    out["ratio_vs_layers"] = (_images(results), labels, n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/figures", help="folder for the PNG figures")
    parser.add_argument("--size", type=int, default=128, help="longest side of each picture (64-128 on a CPU)")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per picture")
    parser.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"),
                        help="lbfgs as in the paper; adam (with --lr) is cheaper per step in a batch")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam's step size")
    parser.add_argument("--weights", default=None, help="weights file (default: the installed VGG19)")
    parser.add_argument("--content", default=str(DEMO_CONTENT))
    parser.add_argument("--style", default=str(DEMO_STYLE))
    args = parser.parse_args()
    runtime.configure()  # the command line's XLA flags and compilation cache, before JAX compiles anything
    params, meta = weights.load(args.weights)
    network = optimize.Network(weights.model_for(meta), params)
    content, style = images.load_image(args.content), images.load_image(args.style)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (tiles, labels, columns) in figures(content, style, network, size=args.size, steps=args.steps,
                                                     optimizer=args.optimizer, lr=args.lr).items():
        images.save_image(out / f"{name}.png", batch_io.contact_sheet(tiles, labels, columns=columns), overwrite=True)
        print(f"wrote {out / name}.png")


if __name__ == "__main__":
    main()
