"""Numbers behind the gallery: per-layer style distance, content distance and smoothness of pictures.

    python scripts/measure_quality.py docs/images/gallery/*.jpg [--style PATH] [--size 256]

For each image: the normalised Gram distance to the style at relu1_1 ...
relu5_1 (deep layers measure large-scale structure, shallow ones fine
texture), the normalised content distance at relu4_2, and the total
variation (lower is smoother). Prints a Markdown table.
"""

import argparse
import pathlib

import jax.numpy as jnp

from jaxstyle import images, losses, optimize, plan, step, weights
from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
from jaxstyle.config import CONTENT_LAYERS, STYLE_LAYERS


def distances(net: optimize.Network, image, content, style) -> tuple[list[float], float]:
    """The normalised Gram distance of ``image`` to ``style`` at each of `STYLE_LAYERS` (the style resized to
    the image's longest side), and its normalised content distance to ``content`` at relu4_2."""
    image = jnp.asarray(image)
    hw = image.shape[:2]
    style_r = step.resize(style, plan.output_shape(style.shape, max(hw)))
    target = {n: losses.gram_matrix(f) for n, f in net.features(style_r, STYLE_LAYERS).items()}
    c_target = net.features(step.resize(content, hw), CONTENT_LAYERS)[CONTENT_LAYERS[0]]
    feats = net.features(image, STYLE_LAYERS + CONTENT_LAYERS)
    style_d = [float(losses.gram_distance(losses.gram_matrix(feats[n]), target[n]) / jnp.mean(target[n] ** 2))
               for n in STYLE_LAYERS]
    return style_d, float(losses.content_loss(feats[CONTENT_LAYERS[0]], c_target) / jnp.mean(c_target ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--content", default=str(DEMO_CONTENT))
    parser.add_argument("--style", default=str(DEMO_STYLE))
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    params, meta = weights.load(args.weights)
    net = optimize.Network(weights.model_for(meta), params)
    content = images.load_image(args.content)
    style = images.load_image(args.style)
    print("| image | " + " | ".join(STYLE_LAYERS) + " | content relu4_2 | TV ×1e3 |")
    print("|---" * (len(STYLE_LAYERS) + 3) + "|")
    for path in args.images:
        image = jnp.asarray(images.load_image(path))
        style_d, content_d = distances(net, image, content, style)
        tv = float(losses.total_variation(image)) * 1e3
        print(f"| {pathlib.Path(path).stem} | " + " | ".join(f"{d:.4f}" for d in style_d)
              + f" | {content_d:.3f} | {tv:.2f} |")


if __name__ == "__main__":
    main()
