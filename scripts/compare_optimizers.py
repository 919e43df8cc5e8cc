"""Adam against L-BFGS on the same images: loss per step, wall time, and the pictures.

    python scripts/compare_optimizers.py --size 384 --steps 300 --out out/optimizers

Writes ``adam.png``, ``lbfgs.png`` and ``losses.csv`` (step, seconds and
loss for each optimiser) into ``--out`` and prints a Markdown table of the
loss at a few steps. The loss compared is the Gatys objective without
L-BFGS's range penalty.
"""

import argparse
import csv
import pathlib
import time


from jaxstyle import images, optimize, weights
from jaxstyle.commands import DEMO_CONTENT, DEMO_STYLE
from jaxstyle.config import StylizeConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=StylizeConfig.size)
    parser.add_argument("--steps", type=int, default=StylizeConfig.steps)
    parser.add_argument("--content", default=str(DEMO_CONTENT))
    parser.add_argument("--style", default=str(DEMO_STYLE))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", default="out/optimizers")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    params, meta = weights.load(args.weights)
    network = optimize.Network(weights.model_for(meta), params)
    content, style = images.load_image(args.content), images.load_image(args.style)
    rows = {}
    for name in ("adam", "lbfgs"):
        config = StylizeConfig(size=args.size, steps=args.steps, optimizer=name)
        log = []
        start = time.perf_counter()

        def record(p, log=log, start=start):
            log.append((p.step, time.perf_counter() - start, p.terms["content"] + p.terms["style"] + p.terms["tv"]))

        result = optimize.stylize(content, style, network, config, callback=record)
        images.save_image(out / f"{name}.png", result, overwrite=True)
        rows[name] = log
    with open(out / "losses.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "step", "seconds", "loss"])
        for name, log in rows.items():
            writer.writerows([name, *row] for row in log)
    print("| step | Adam loss | Adam s | L-BFGS loss | L-BFGS s |\n|---|---|---|---|---|")
    for (step, ta, la), (_, tl, ll) in zip(rows["adam"], rows["lbfgs"]):
        if step in (10, 50, 100, 200, 300) or step == args.steps:
            print(f"| {step} | {la:.4f} | {ta:.0f} | {ll:.4f} | {tl:.0f} |")


if __name__ == "__main__":
    main()
