"""Time one forward pass of the real VGG19 on the CPU, and measure its peak memory.

    python scripts/forward_bench.py [--sizes 512 256] [--weights FILE] [--repeats 3]

For each size, a fresh Python process loads the weights, jits the network
(every layer from conv1_1 to relu5_1 returned, as the style losses read
them) on the bundled photo resized to size x size pixels, and reports

- compile: lowering plus XLA compilation, excluded from the forward times;
- forward: the median wall time of ``--repeats`` calls after one warm-up call,
  each until the result is ready;
- peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end, with
  the value after loading the weights (before compiling) for comparison.

A fresh process per size keeps one size's peak out of the next one's. The
load average is printed too: on a busy machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _measure(size: int, weights_path: str | None, repeats: int) -> dict:
    """One size, in this process: the numbers as a dict."""
    import jax

    from jaxstyle import images, vgg, weights

    params, meta = weights.load(weights_path)
    names = vgg.layer_names(vgg.ARCHITECTURES[meta["architecture"]][0])
    layers = names[: names.index("relu5_1") + 1]
    model = weights.model_for(meta)
    photo = images.resize_to(images.load_image(pathlib.Path(images.__file__).parent / "examples" / "chelsea.png"),
                             (size, size))
    params, photo = jax.device_put((params, photo))
    rss_loaded = _rss_mib()

    start = time.perf_counter()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, layers)).lower(params, photo).compile()
    compile_s = time.perf_counter() - start

    jax.block_until_ready(forward(params, photo))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(params, photo))
        times.append(time.perf_counter() - start)
    return {"size": size, "compile_s": compile_s, "forward_s": statistics.median(times), "runs_s": times,
            "rss_loaded_mib": rss_loaded, "rss_peak_mib": _rss_mib(), "layers": len(layers),
            "backend": jax.default_backend(), "devices": str(jax.devices()), "weights": meta["params_sha256"][:12]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256], help="image sizes, pixels a side")
    parser.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (default: 3)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()

    if args.child is not None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        print(json.dumps(_measure(args.child, args.weights, args.repeats)))
        return 0

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
          + ("  (busy machine: times are upper bounds)" if load[0] > 0.5 * (os.cpu_count() or 1) else ""))
    for size in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(size), "--repeats", str(args.repeats)]
        if args.weights:
            cmd += ["--weights", args.weights]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"forward_bench: error: size {size} failed: {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        runs = ", ".join(f"{t:.3f}" for t in r["runs_s"])
        print(f"VGG19 to relu5_1 ({r['layers']} layers returned), {size}x{size}, {r['backend']}: "
              f"compile {r['compile_s']:.2f} s, forward median {r['forward_s']:.3f} s ({runs}), "
              f"peak RSS {r['rss_peak_mib']:.0f} MiB (after loading weights {r['rss_loaded_mib']:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
