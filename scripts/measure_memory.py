"""Measure the peak memory of a style transfer run, to calibrate `jaxstyle.memory`.

    python scripts/measure_memory.py [--sizes 128 256 384] [--weights FILE] [--remat] [--strip-pixels N]
                                     [--optimizer adam]

For each size, a fresh Python process sets the command line's XLA flags
(`runtime.configure`), loads the weights (VGG19 by default) and the bundled
photo and painting, runs `optimize.stylize` for 2 steps (one compiled chunk:
compilation plus the step's forward and backward pass) at the default
layers, and reports its peak resident memory (Linux's VmHWM, which, unlike
``ru_maxrss``, does not carry over the peak of the process that started it)
next to the activation bytes ``4 * A`` of `memory.step_activation_elements`
and `memory.peak_bytes`. The fit ``peak = base + factor * 4 * A`` gives
`memory.BASE` and `memory.ACTIVATION_FACTOR`, which add a margin to the
measured values; `jaxstyle.memory` lists the measurements.

Measured on XLA:CPU (jax 0.10.2, 2 shared cores), VGG19, the bundled photo
(451x300), RSS after loading the weights ~260 MiB; MiB:

    optimiser  size  output    4*A   peak   estimate
    adam        384  255x384    226    933    1126
    adam       1024  681x1024  1621   2159    3133
    lbfgs       384  255x384    226    956    1153
    lbfgs       768  511x768    910   1488    2218
    adam, strips of 2**18 pixels:
               1024  681x1024   789   1342    1968

Before the command line set its own flags, XLA's default schedule peaked at
1.7-1.9 times ``4 * A`` over ~620 MiB (3506 MiB at 1024 px).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _rss_mib() -> float:
    """This process's peak resident memory, MiB.

    Linux's VmHWM belongs to the process image: ``ru_maxrss`` would carry over
    the peak of the process that forked this one (such as a test runner).
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _measure(size: int, weights_path: str | None, remat: bool, optimizer: str, strip_pixels: int = 0) -> dict:
    from jaxstyle import runtime

    runtime.configure(cache=False, low_memory=remat)  # the command line's XLA flags
    from jaxstyle import images, memory, optimize, vgg, weights
    from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
    from jaxstyle.config import StylizeConfig

    params, meta = weights.load(weights_path)
    content, style = images.load_image(DEMO_CONTENT), images.load_image(DEMO_STYLE)
    rss_loaded = _rss_mib()
    config = StylizeConfig(size=size, steps=2, remat=remat, optimizer=optimizer, strip_pixels=strip_pixels)
    network = optimize.Network(weights.model_for(meta), params)
    out = optimize.stylize(content, style, network, config)
    blocks, widths = vgg.ARCHITECTURES[meta["architecture"]]
    acts = memory.step_activation_elements(config, blocks, widths, out.shape[:2], "relu5_1")
    return {"size": size, "hw": list(out.shape[:2]), "remat": remat, "optimizer": optimizer, "strip_pixels": strip_pixels,
            "activations_mib": 4 * acts / 2**20, "rss_loaded_mib": rss_loaded, "rss_peak_mib": _rss_mib(),
            "estimate_mib": memory.peak_bytes(config, content.shape, blocks, widths, [style.shape]) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384], help="output sizes (longest side)")
    parser.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    parser.add_argument("--remat", action="store_true", help="measure with --remat")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    parser.add_argument("--strip-pixels", type=int, default=0, help="with --remat: pixels per strip (0: the default)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_measure(args.child, args.weights, args.remat, args.optimizer, args.strip_pixels)))
        return 0
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    print("size  hw        4*A MiB  loaded MiB  peak MiB  estimate MiB  (peak-loaded)/(4*A)")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--optimizer", args.optimizer]
        cmd += ["--remat"] * args.remat + (["--weights", args.weights] if args.weights else [])
        cmd += ["--strip-pixels", str(args.strip_pixels)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = (r["rss_peak_mib"] - r["rss_loaded_mib"]) / r["activations_mib"]
        print(f"{size:<5} {r['hw'][0]}x{r['hw'][1]:<6} {r['activations_mib']:8.0f}  {r['rss_loaded_mib']:10.0f}"
              f"  {r['rss_peak_mib']:8.0f}  {r['estimate_mib']:12.0f}  {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
