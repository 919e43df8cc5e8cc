"""A trained fast-style network beside `jaxstyle stylize` on photos it did not train on, with times and quality.

    jaxstyle train jaxstyle/examples/van_gogh_auvers.png --images ../shared/images/train -o van_gogh.msgpack \\
        --architecture johnson_half --size 256 --steps 800           # the demo model (30-70 min on 2 cores, by machine)
    python scripts/fast_demo.py van_gogh.msgpack [--size 256] [--out docs/images/fast]

For each photo (the bundled cat and the CC0 coffee cup, neither among the training photos) at
``--size``: the network's picture and its time (one forward pass, compiled beforehand), and
`optimize.stylize`'s pictures after 100 and 300 Adam steps (its default) and their times. It writes
each picture and one comparison sheet, and prints a Markdown table of the measures of
`scripts/measure_quality.py`: the normalised Gram distance to the style at relu1_1 ... relu5_1 (their
mean as "style") and the normalised content distance at relu4_2 ("content").
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
from measure_quality import distances  # scripts/: the same measures as the gallery's

from jaxstyle import batch_io, feedforward, images, model_file, optimize, plan, transform, weights
from jaxstyle.config import STYLE_LAYERS, StylizeConfig

ROOT = pathlib.Path(__file__).parents[1]
PHOTOS = {"chelsea": ROOT / "jaxstyle" / "examples" / "chelsea.png", "coffee": ROOT / "docs" / "images" / "video" /
          "coffee.png"}
STYLE = ROOT / "jaxstyle" / "examples" / "van_gogh_auvers.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default="docs/images/fast")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params, meta = weights.load()
    network = optimize.Network(weights.model_for(meta), params)
    net_params, model_meta = model_file.load(args.model, expected_shapes=transform.expected_shapes)
    model = transform.model_for(model_meta["architecture"])
    style = images.load_image(STYLE)
    rows, tiles, labels = [], [], []
    for name, path in PHOTOS.items():
        photo = images.load_image(path)
        photo = images.resize_to(photo, plan.output_shape(photo.shape, args.size))
        feedforward.stylize_images(model, net_params, [photo], batch_size=1)  # compile
        started = time.perf_counter()
        [fast] = feedforward.stylize_images(model, net_params, [photo], batch_size=1)
        pictures = {"fast": (fast, time.perf_counter() - started)}
        for steps in (100, 300):
            started = time.perf_counter()
            slow = optimize.stylize(photo, style, network, StylizeConfig(size=args.size, steps=steps))
            pictures[f"stylize {steps}"] = (slow, time.perf_counter() - started)
        for kind, (picture, seconds) in pictures.items():
            images.save_image(out / f"{name}_{kind.replace(' ', '_')}.png", picture, overwrite=True)
            style_d, content_d = distances(network, picture, photo, style)
            rows.append(f"| {name} | {kind} | {seconds:.2f} | {np.mean(style_d):.4f} | "
                        + " | ".join(f"{d:.4f}" for d in style_d) + f" | {content_d:.3f} |")
            tiles.append(picture)
            labels.append(f"{kind}: {seconds:.2f} s" if seconds < 10 else f"{kind}: {seconds:.0f} s")
    sheet = batch_io.contact_sheet(tiles, labels, columns=3)
    images.save_image(out / "fast_vs_stylize.jpg", sheet, overwrite=True)
    print(f"| photo | picture | seconds | style | {' | '.join(STYLE_LAYERS)} | content |")
    print("|---" * (len(STYLE_LAYERS) + 5) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
