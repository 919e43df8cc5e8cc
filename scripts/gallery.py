"""The README's gallery: one picture per quality control, made by the library.

    python scripts/gallery.py --size 256 --steps 200 --out docs/images/gallery

Each entry runs `jaxstyle.optimize.stylize` on the bundled cat photo with the
bundled paintings, changing one setting from the defaults, and writes
``<name>.jpg`` plus ``times.md`` (seconds per picture). ``--only NAME ...``
makes a subset.
"""

import argparse
import pathlib
import time

import numpy as np

from jaxstyle import images, optimize, plan, weights
from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE, EXAMPLES
from jaxstyle.config import StylizeConfig

WAVE = EXAMPLES / "great_wave.png"


def _half_masks(shape, style_shapes):
    """Left half of the output takes the first style, right half the second; all of each style image."""
    h, w = shape[:2]
    left = np.zeros((h, w), np.float32)
    left[:, : w // 2] = 1
    return [(left, np.ones(style_shapes[0][:2], np.float32)), (1 - left, np.ones(style_shapes[1][:2], np.float32))]


def entries(base: StylizeConfig):
    """name -> (config, styles, masks, caption)."""
    van_gogh, wave = [DEMO_STYLE], [DEMO_STYLE, WAVE]
    n_scales = len(plan.scale_sizes(base.replace(multiscale=True)))
    return {
        "baseline": (base, van_gogh, False, "defaults"),
        "multiscale": (base.replace(multiscale=True, scale_steps=(base.steps // 2,) * n_scales), van_gogh, False,
                       f"--multiscale, {base.steps // 2} steps at each of {n_scales} scales (about the same time)"),
        "ema": (base.replace(ema_decay=0.95), van_gogh, False, "--ema-decay 0.95"),
        "blend": (base.replace(style_blend=(0.5, 0.5)), wave, False, "--style van_gogh great_wave --style-blend 0.5 0.5"),
        "style_scale_small": (base.replace(style_scale=0.5), van_gogh, False, "--style-scale 0.5"),
        "style_scale_large": (base.replace(style_scale=2.0), van_gogh, False, "--style-scale 2"),
        "luminance": (base.replace(preserve_colors="luminance"), van_gogh, False, "--preserve-colors luminance"),
        "histogram": (base.replace(preserve_colors="histogram"), van_gogh, False, "--preserve-colors histogram"),
        "mean_cov": (base.replace(style_loss="mean_cov"), van_gogh, False, "--style-loss mean_cov"),
        "avg_pool": (base.replace(pooling="avg"), van_gogh, False, "--pooling avg (rescaled by 2)"),
        "replicate": (base.replace(padding="replicate"), van_gogh, False, "--padding replicate"),
        "masks": (base, wave, True, "left: Van Gogh, right: Hokusai (--content-mask/--style-mask)"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", default="docs/images/gallery")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params, meta = weights.load(args.weights)
    network = optimize.Network(weights.model_for(meta), params)
    content = images.load_image(DEMO_CONTENT)
    base = StylizeConfig(size=args.size, steps=args.steps)
    times = []
    for name, (config, style_paths, masked, caption) in entries(base).items():
        if args.only and name not in args.only:
            continue
        styles = [images.load_image(p) for p in style_paths]
        masks = _half_masks(content.shape, [s.shape for s in styles]) if masked else None
        start = time.perf_counter()
        result = optimize.stylize(content, styles, network, config, masks=masks)
        seconds = time.perf_counter() - start
        images.save_image(out / f"{name}.jpg", result, overwrite=True)
        times.append(f"| {name} | {caption} | {seconds:.0f} |")
        print(times[-1], flush=True)
    (out / "times.md").write_text("| picture | setting | seconds |\n|---|---|---|\n" + "\n".join(times) + "\n")


if __name__ == "__main__":
    main()
