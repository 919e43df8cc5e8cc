"""Measure the peak memory of a style transfer run, to calibrate `jaxstyle.memory`.

    python scripts/measure_memory.py [--sizes 128 256 384] [--weights FILE] [--remat] [--optimizer adam]

For each size, a fresh Python process loads the weights (VGG19 by default)
and the bundled photo and painting, runs `optimize.stylize` for 2 steps (one
compiled chunk: compilation plus the step's forward and backward pass) at
the default layers, and reports its peak resident set size (``ru_maxrss``)
next to the activation bytes ``4 * A`` of `memory.activation_elements`. The
fit ``peak = base + factor * 4 * A`` gives `memory.BASE` and
`memory.ACTIVATION_FACTOR` (which add a margin to the measured values).

Measured on XLA:CPU (jax 0.10.2, 2 shared cores) with XLA's default flags
(before the command line set its own), VGG19, the bundled photo (451x300);
RSS after loading the weights ~300 MiB; MiB throughout:

    optimiser  size  output    4*A   peak   estimate
    adam        128   85x128     25    670     851  (+27%)
    adam        256  170x256    101    809    1006  (+24%)
    adam        384  255x384    226   1066    1261  (+18%)
    adam        512  341x512    405   1396    1626  (+16%)
    adam        768  511x768    910   2270    2656  (+17%)
    adam       1024  681x1024  1621   3506    4106  (+17%)
    lbfgs       128   85x128     25    753     854  (+13%)
    lbfgs       384  255x384    226   1205    1288   (+7%)
    lbfgs       768  511x768    910   2473    2764  (+12%)

The slope is 1.7-1.9 peak bytes per activation byte, over a fixed ~620 MiB
(Adam) or ~750 MiB (L-BFGS); `jaxstyle.memory` uses BASE = 800 MiB and
ACTIVATION_FACTOR = 2.0, so the estimate is 7-27% above every measurement
(a refusal should never hit a run that fits). The child now sets the command
line's flags (`runtime.configure`), with which the peaks are lower and the
estimate errs higher: Adam 821, 1464 and 2118 MiB at 384, 768 and 1024 px;
with ``--remat`` (4*A counts one strip per stage, `memory.step_activation_elements`)
765, 1032, 1087, 1443 and 1921 MiB at 384, 768, 1024, 1536 and 2048 px,
against estimates of 1173, 1400, 1631, 2219 and 3065 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _measure(size: int, weights_path: str | None, remat: bool, optimizer: str) -> dict:
    from jaxstyle import runtime

    runtime.configure(cache=False, low_memory=remat)  # the command line's XLA flags
    from jaxstyle import images, memory, optimize, vgg, weights
    from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
    from jaxstyle.config import StylizeConfig

    params, meta = weights.load(weights_path)
    content, style = images.load_image(DEMO_CONTENT), images.load_image(DEMO_STYLE)
    rss_loaded = _rss_mib()
    config = StylizeConfig(size=size, steps=2, remat=remat, optimizer=optimizer)
    network = optimize.Network(weights.model_for(meta), params)
    out = optimize.stylize(content, style, network, config)
    blocks, widths = vgg.ARCHITECTURES[meta["architecture"]]
    acts = memory.step_activation_elements(config, blocks, widths, out.shape[:2], "relu5_1")
    return {"size": size, "hw": list(out.shape[:2]), "remat": remat, "optimizer": optimizer,
            "activations_mib": 4 * acts / 2**20, "rss_loaded_mib": rss_loaded, "rss_peak_mib": _rss_mib(),
            "estimate_mib": memory.peak_bytes(config, content.shape, blocks, widths) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384], help="output sizes (longest side)")
    parser.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    parser.add_argument("--remat", action="store_true", help="measure with --remat")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_measure(args.child, args.weights, args.remat, args.optimizer)))
        return 0
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    print("size  hw        4*A MiB  loaded MiB  peak MiB  estimate MiB  (peak-loaded)/(4*A)")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--optimizer", args.optimizer]
        cmd += ["--remat"] * args.remat + (["--weights", args.weights] if args.weights else [])
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
