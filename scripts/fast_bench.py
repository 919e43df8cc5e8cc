"""Speed of fast style against `jaxstyle stylize`, measured in one process with the real VGG19.

    python scripts/fast_bench.py [--sizes 256 512] [--train-sizes 128 256] [--architecture johnson_half]
        [--apply-batch 4] [--train-batch 4] [--random-weights]

- **apply**: pictures per second of the transformation network (`feedforward.stylize_images`, batches of
  ``--apply-batch`` photos of the bundled cat at each size; the network's speed does not depend on its weights, so fresh
  weights serve), against the seconds `optimize.stylize` takes for the same photo at its defaults (300
  Adam steps), measured as the median step time over 20 steps times 300. The ratio is per picture.
- **train**: seconds per training step at batch ``--train-batch`` at each training size, and the step's GFLOP/s (from XLA's
  cost analysis of the compiled step) against the GFLOP/s of a `stylize` step at the same size.

Medians of a few repetitions after a warm-up (compilation excluded). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import statistics
import time

import jax
import numpy as np

from jaxstyle import feedforward, images, optimize, plan, transform, vgg, weights
from jaxstyle.config import StylizeConfig, TrainConfig

EXAMPLES = pathlib.Path(__file__).parents[1] / "jaxstyle" / "examples"


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def stylize_step(network, content, style, size: int) -> tuple[float, float]:
    """(seconds per step, GFLOP/s) of `optimize.stylize` at ``size``, from the reports of a 30-step run."""
    reports = []
    optimize.stylize(content, style, network, StylizeConfig(size=size, steps=30), callback=reports.append)
    (s0, t0), (s1, t1) = (reports[0].step, reports[0].elapsed), (reports[-1].step, reports[-1].elapsed)
    seconds = (t1 - t0) / (s1 - s0)
    shape = plan.output_shape(content.shape, size)
    flops = plan.scale_work(StylizeConfig(size=size, steps=1), shape, *plan.ARCHITECTURES["vgg19"])[0][1]
    return seconds, flops / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--architecture", default="johnson_half", choices=list(transform.ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--apply-batch", type=int, default=4, help="pictures per forward pass of apply")
    parser.add_argument("--train-batch", type=int, default=4, help="photos per training step")
    parser.add_argument("--random-weights", action="store_true",
                        help="VGG19 of random weights (same FLOPs and speed) where the real ones cannot be had")
    args = parser.parse_args()
    if args.random_weights:
        params, meta = vgg.init_params("vgg19", jax.random.key(0)), {"architecture": "vgg19", "preprocessing": "caffe"}
    else:
        params, meta = weights.load()
    network = optimize.Network(weights.model_for(meta), params)
    content = images.load_image(EXAMPLES / "chelsea.png")
    style = images.load_image(EXAMPLES / "van_gogh_auvers.png")
    model = transform.model_for(args.architecture)
    net_params = transform.init_params(args.architecture, jax.random.key(0))
    print(f"{args.architecture}: {sum(x.size for x in jax.tree.leaves(net_params)):,} parameters")
    for size in args.sizes:
        photo = images.resize_to(content, plan.output_shape(content.shape, size))
        batch = [photo] * args.apply_batch
        per_picture = median_seconds(lambda: feedforward.stylize_images(model, net_params, batch,
                                                                        batch_size=args.apply_batch),
                                     args.repeats) / args.apply_batch
        step_seconds, _ = stylize_step(network, content, style, size)
        stylize_seconds = 300 * step_seconds
        print(f"apply {size} px: {1 / per_picture:.2f} pictures/s ({per_picture * 1000:.1f} ms each); stylize at "
              f"its defaults: {stylize_seconds:.1f} s a picture; ratio {stylize_seconds / per_picture:.0f}x")
    for size in args.train_sizes:
        config = TrainConfig(architecture=args.architecture, size=size, steps=1, batch_size=args.train_batch)
        trainer = feedforward.Trainer(network, [style], config)
        state = trainer.init()
        photos = trainer.photos(np.stack([images.resize_to(content, (size, size))] * args.train_batch))
        compiled = trainer.step.lower(state, photos).compile()
        flops = compiled.cost_analysis()["flops"]
        states = itertools.repeat(state)
        seconds = median_seconds(lambda: jax.block_until_ready(trainer.step(next(states), photos)), args.repeats)
        _, stylize_gflops = stylize_step(network, content, style, size)
        print(f"train {size} px, batch {args.train_batch}: {seconds:.2f} s/step ({1 / seconds:.2f} steps/s), "
              f"{flops / seconds / 1e9:.1f} GFLOP/s; a stylize "
              f"step at {size} px: {stylize_gflops:.1f} GFLOP/s; ratio {flops / seconds / 1e9 / stylize_gflops:.2f}")


if __name__ == "__main__":
    main()
