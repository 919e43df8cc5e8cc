"""Mixed precision check: the bfloat16 network's output against the float32 one, as PSNR.

    python scripts/bf16_quality.py [--size 128] [--steps 100] [--optimizer adam]

Runs `stylize` twice on the bundled photo and painting with the same settings
and start, once with ``dtype="float32"`` and once with ``dtype="bfloat16"``
(the VGG convolutions in bfloat16; Gram matrices and losses accumulated in
float32), and prints the PSNR of the bfloat16 output against the float32
output (RGB in [0, 1], peak 1), the final loss of each (evaluated in float32)
and the wall times. On a CPU bfloat16 is no faster; it is meant for GPUs and
TPUs, and this measures what it costs in quality.
"""

from __future__ import annotations

import argparse
import os
import time

import jax.numpy as jnp
import numpy as np

from jaxstyle import images, optimize, plan, runtime, step, weights
from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
from jaxstyle.config import StylizeConfig


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1], dB."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = runtime.xla_flags()

    params, meta = weights.load(args.weights)
    network = optimize.Network(weights.model_for(meta), params)
    content, style = images.load_image(DEMO_CONTENT), images.load_image(DEMO_STYLE)
    outputs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = StylizeConfig(size=args.size, steps=args.steps, optimizer=args.optimizer, dtype=dtype)
        start = time.perf_counter()
        outputs[dtype] = optimize.stylize(content, style, network, config)
        seconds[dtype] = time.perf_counter() - start
    # Both outputs scored by the float32 objective.
    config = StylizeConfig(size=args.size)
    hw = outputs["float32"].shape[:2]
    targets = step.compute_targets(network.model, params, step.resize(content, hw),
                                       (step.resize(style, plan.output_shape(style.shape, args.size)),),
                                       jnp.ones(1), content_layers=config.content_layers,
                                       style_layers=config.style_layers)
    loss_weights = step.loss_weights(config, targets)
    loss = {k: sum(float(v) for v in step.loss_terms(network.model, params, jnp.asarray(x), targets,
                                                      loss_weights).values())
            for k, x in outputs.items()}
    start_psnr = psnr(outputs["float32"], step.resize(content, hw))
    print(f"size {args.size} ({hw[0]} x {hw[1]}), {args.steps} {args.optimizer} steps, load {os.getloadavg()[0]:.2f}: "
          f"PSNR bfloat16 vs float32 {psnr(outputs['bfloat16'], outputs['float32']):.1f} dB "
          f"(float32 output vs the content photo: {start_psnr:.1f} dB); "
          f"final loss float32 {loss['float32']:.4f}, bfloat16 {loss['bfloat16']:.4f}; "
          f"wall float32 {seconds['float32']:.1f} s, bfloat16 {seconds['bfloat16']:.1f} s (compile included)")


if __name__ == "__main__":
    main()
